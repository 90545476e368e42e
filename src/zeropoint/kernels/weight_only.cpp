// Weight-only Linear kernels for the CPU: y = x · decode(codes)ᵀ + b, decoding packed weight
// codes in registers (never writing the float weight to memory).
//
// Weight layout (row n = output channel, k = input channel, K a multiple of 8):
//   codes: (N, K·c/8) uint8, c ∈ {1, 2, 4, 8} bits per code; element k of a row sits in byte
//          k·c/8 at bit offset c·(k mod 8/c) — the first element in the low bits (ONNX / QTensor
//          order), so a QTensor's packed bytes are used as they are.
//   kind 0, affine:  w = S[n, g]·((u ⊕ F) − Z'[n, g]) + O[n, g] for group g = k / group_size
//                    (O, optional, holds HQQ's fractional zero points; without it this is in
//                    float32 exactly what zeropoint.functional.dequantize_int computes: signed
//                    codes are stored in two's complement within their c bits (QTensor's
//                    packing), F = 2^(c−1) flips their sign bit, giving q + F, and Z' = Z + F
//   kind 1, table:   w = T[n or 0, u] (codebooks, powers of two, binary codes, fp4 × scale)
//   kind 2 / 3, fp8: w = fp8_e4m3fn(u) · S[n] / fp8_e5m2(u) · S[n] (u the fp8 bit pattern)
//
// The AVX2+FMA path (chosen at run time) decodes 8 codes into a float vector and multiplies it
// with up to 8 rows of x held in registers; rows of W are split over torch's threads. Other
// CPUs run the scalar path, the same arithmetic one element at a time.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define ZP_X86 1
#define ZP_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace {

enum Kind : int64_t { AFFINE = 0, TABLE = 1, FP8_E4M3 = 2, FP8_E5M2 = 3 };

struct Args {
  const float* x;  // (B, K)
  int64_t batch, K, N;
  const uint8_t* codes;  // (N, row_bytes)
  int64_t row_bytes;
  const float* scale;   // affine: (N, groups); fp8: (N) ; table: unused
  const int32_t* zero;  // affine: (N, groups)
  int32_t flip;         // affine: 2^(c−1) for signed codes, else 0
  const float* offset;  // affine: (N, groups) or null
  int64_t groups, group;
  const float* table;  // (table_rows, 2^c)
  int64_t table_rows, table_size;
  const float* bias;  // (N) or null
  float* y;           // (B, N)
};

// ------------------------------------------------------------------ scalar reference path

inline uint32_t code_at(const uint8_t* row, int64_t k, int c) {
  if (c == 8) return row[k];
  const int per = 8 / c;
  return (row[k / per] >> (c * (k % per))) & ((1u << c) - 1u);
}

inline float fp8_value(uint32_t v, int64_t kind) {
  // e4m3fn: exponent bits 3..6 (bias 7), mantissa 0..2; e5m2: exponent 2..6 (bias 15)
  const int man = kind == FP8_E4M3 ? 3 : 2;
  const int bias = kind == FP8_E4M3 ? 7 : 15;
  const uint32_t e = (v & 0x7Fu) >> man, m = v & ((1u << man) - 1u);
  float mag = e == 0 ? std::ldexp(static_cast<float>(m), 1 - bias - man)
                     : std::ldexp(static_cast<float>(m + (1u << man)), static_cast<int>(e) - bias - man);
  return (v & 0x80u) ? -mag : mag;
}

inline float decode_scalar(const Args& a, int c, int64_t kind, int64_t n, int64_t k) {
  const uint32_t u = code_at(a.codes + n * a.row_bytes, k, c);
  switch (kind) {
    case AFFINE: {
      const int64_t i = n * a.groups + k / a.group;
      const float q = static_cast<float>(static_cast<int32_t>(u ^ static_cast<uint32_t>(a.flip)) - a.zero[i]);
      return a.offset ? std::fma(q, a.scale[i], a.offset[i]) : q * a.scale[i];
    }
    case TABLE:
      return a.table[(a.table_rows == 1 ? 0 : n) * a.table_size + u];
    default:
      return fp8_value(u, kind) * a.scale[n];
  }
}

void rows_scalar(const Args& a, int c, int64_t kind, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t b = 0; b < a.batch; ++b) {
      const float* xb = a.x + b * a.K;
      float acc = 0.f;
      for (int64_t k = 0; k < a.K; ++k) acc += decode_scalar(a, c, kind, n, k) * xb[k];
      a.y[b * a.N + n] = acc + (a.bias ? a.bias[n] : 0.f);
    }
}

void dequantize_scalar(const Args& a, int c, int64_t kind, float* w, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t k = 0; k < a.K; ++k) w[n * a.K + k] = decode_scalar(a, c, kind, n, k);
}

#ifdef ZP_X86
// ------------------------------------------------------------------ AVX2 + FMA path

template <int C>
ZP_AVX2 inline __m256i unpack8(const uint8_t* p) {
  // the 8 codes of C bits that start at byte p (C bytes)
  if constexpr (C == 8) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  } else {
    uint32_t v = 0;
    std::memcpy(&v, p, C);
    const __m256i shifts = _mm256_setr_epi32(0, C, 2 * C, 3 * C, 4 * C, 5 * C, 6 * C, 7 * C);
    return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(v)), shifts),
                            _mm256_set1_epi32((1 << C) - 1));
  }
}

ZP_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Decoders: set up per row (and per group), then map 8 unsigned codes to 8 floats.
template <int C, int64_t KIND>
struct Decoder;

template <int C>
struct Decoder<C, AFFINE> {
  const float *s, *o;
  const int32_t* z;
  __m256 S, O;
  __m256i Z, F;
  ZP_AVX2 Decoder(const Args& a, int64_t n)
      : s(a.scale + n * a.groups),
        o(a.offset ? a.offset + n * a.groups : nullptr),
        z(a.zero + n * a.groups),
        F(_mm256_set1_epi32(a.flip)) {}
  ZP_AVX2 void group(int64_t g) {
    S = _mm256_set1_ps(s[g]);
    O = _mm256_set1_ps(o ? o[g] : 0.f);  // fma(q, S, 0) = fl(q·S): exact dequantize_int
    Z = _mm256_set1_epi32(z[g]);
  }
  ZP_AVX2 __m256 operator()(__m256i u) const {
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_xor_si256(u, F), Z)), S, O);
  }
  ZP_AVX2 float final_scale() const { return 1.f; }
};

template <int C>
struct Decoder<C, TABLE> {
  // ≤ 8 entries: one permute; 16: two permutes and a blend; 256: a gather
  __m256 lo, hi;
  const float* t;
  ZP_AVX2 Decoder(const Args& a, int64_t n) : t(a.table + (a.table_rows == 1 ? 0 : n) * a.table_size) {
    if constexpr (C <= 4) {
      float buf[16] = {0};
      std::memcpy(buf, t, sizeof(float) * (1 << C));
      lo = _mm256_loadu_ps(buf);
      hi = _mm256_loadu_ps(buf + 8);
    }
  }
  ZP_AVX2 void group(int64_t) {}
  ZP_AVX2 __m256 operator()(__m256i u) const {
    if constexpr (C <= 3) {
      return _mm256_permutevar8x32_ps(lo, u);
    } else if constexpr (C == 4) {
      const __m256 high = _mm256_castsi256_ps(_mm256_cmpgt_epi32(u, _mm256_set1_epi32(7)));
      return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, u), _mm256_permutevar8x32_ps(hi, u), high);
    } else {
      return _mm256_i32gather_ps(t, u, 4);
    }
  }
  ZP_AVX2 float final_scale() const { return 1.f; }
};

template <int C, int64_t KIND>
struct Fp8Decoder {
  // magnitude bits shifted under float32's exponent, plus the bias difference: exact for
  // normal codes; subnormal codes (exponent field 0) are fixed up as 2f − 2^(1−bias)
  static constexpr int MAN = KIND == FP8_E4M3 ? 3 : 2;
  static constexpr int BIAS = KIND == FP8_E4M3 ? 7 : 15;
  float s;
  ZP_AVX2 Fp8Decoder(const Args& a, int64_t n) : s(a.scale[n]) {}
  ZP_AVX2 void group(int64_t) {}
  ZP_AVX2 __m256 operator()(__m256i u) const {
    const __m256i mag = _mm256_and_si256(u, _mm256_set1_epi32(0x7F));
    const __m256i bits = _mm256_add_epi32(_mm256_slli_epi32(mag, 23 - MAN), _mm256_set1_epi32((127 - BIAS) << 23));
    __m256 f = _mm256_castsi256_ps(bits);
    const __m256 sub = _mm256_castsi256_ps(
        _mm256_cmpeq_epi32(_mm256_srli_epi32(mag, MAN), _mm256_setzero_si256()));
    const __m256 fixed = _mm256_fmsub_ps(f, _mm256_set1_ps(2.f), _mm256_set1_ps(std::ldexp(1.f, 1 - BIAS)));
    f = _mm256_blendv_ps(f, fixed, sub);
    const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x80)), 24);
    return _mm256_or_ps(f, _mm256_castsi256_ps(sign));
  }
  ZP_AVX2 float final_scale() const { return s; }
};
template <int C>
struct Decoder<C, FP8_E4M3> : Fp8Decoder<C, FP8_E4M3> { using Fp8Decoder<C, FP8_E4M3>::Fp8Decoder; };
template <int C>
struct Decoder<C, FP8_E5M2> : Fp8Decoder<C, FP8_E5M2> { using Fp8Decoder<C, FP8_E5M2>::Fp8Decoder; };

// B rows of x against one row of W; U independent accumulators per x row hide FMA latency.
template <int C, int64_t KIND, int B, int U>
ZP_AVX2 void row_kernel(const Args& a, int64_t n) {
  const uint8_t* row = a.codes + n * a.row_bytes;
  Decoder<C, KIND> dec(a, n);
  __m256 acc[B][U];
  for (int b = 0; b < B; ++b)
    for (int u = 0; u < U; ++u) acc[b][u] = _mm256_setzero_ps();
  const uint8_t* cp = row;
  const float* xp = a.x;
  const int64_t steps = a.group / (8 * U);
  for (int64_t g = 0; g < a.groups; ++g) {
    dec.group(g);
    for (int64_t j = 0; j < steps; ++j, cp += C * U, xp += 8 * U) {
      for (int u = 0; u < U; ++u) {
        const __m256 w = dec(unpack8<C>(cp + C * u));
        for (int b = 0; b < B; ++b)
          acc[b][u] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xp + b * a.K + 8 * u), acc[b][u]);
      }
    }
  }
  const float s = dec.final_scale();
  const float bias = a.bias ? a.bias[n] : 0.f;
  for (int b = 0; b < B; ++b) {
    __m256 t = acc[b][0];
    for (int u = 1; u < U; ++u) t = _mm256_add_ps(t, acc[b][u]);
    a.y[b * a.N + n] = hsum(t) * s + bias;
  }
}

template <int C, int64_t KIND, int B, int U>
ZP_AVX2 void rows_avx2(const Args& a, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) row_kernel<C, KIND, B, U>(a, n);
}

using RowsFn = void (*)(const Args&, int64_t, int64_t);

template <int C, int64_t KIND, int B>
RowsFn pick_unroll(int64_t group) {
  // the most accumulators (B·U ≤ 8) whose unrolled step divides the group
  if constexpr (B <= 2) {
    if (group % 32 == 0) return &rows_avx2<C, KIND, B, 4>;
  }
  if constexpr (B <= 4) {
    if (group % 16 == 0) return &rows_avx2<C, KIND, B, 2>;
  }
  return &rows_avx2<C, KIND, B, 1>;
}

template <int C, int64_t KIND>
RowsFn pick_batch(int64_t batch, int64_t group) {
  switch (batch) {
    case 1: return pick_unroll<C, KIND, 1>(group);
    case 2: return pick_unroll<C, KIND, 2>(group);
    case 3: return pick_unroll<C, KIND, 3>(group);
    case 4: return pick_unroll<C, KIND, 4>(group);
    case 5: return pick_unroll<C, KIND, 5>(group);
    case 6: return pick_unroll<C, KIND, 6>(group);
    case 7: return pick_unroll<C, KIND, 7>(group);
    default: return pick_unroll<C, KIND, 8>(group);
  }
}

RowsFn pick(int c, int64_t kind, int64_t batch, int64_t group) {
  switch (kind) {
    case AFFINE:
      if (c == 2) return pick_batch<2, AFFINE>(batch, group);
      if (c == 4) return pick_batch<4, AFFINE>(batch, group);
      if (c == 8) return pick_batch<8, AFFINE>(batch, group);
      return nullptr;
    case TABLE:
      if (c == 1) return pick_batch<1, TABLE>(batch, group);
      if (c == 2) return pick_batch<2, TABLE>(batch, group);
      if (c == 4) return pick_batch<4, TABLE>(batch, group);
      if (c == 8) return pick_batch<8, TABLE>(batch, group);
      return nullptr;
    case FP8_E4M3:
      return c == 8 ? pick_batch<8, FP8_E4M3>(batch, group) : nullptr;
    case FP8_E5M2:
      return c == 8 ? pick_batch<8, FP8_E5M2>(batch, group) : nullptr;
    default:
      return nullptr;
  }
}

template <int C, int64_t KIND>
ZP_AVX2 void dequantize_rows(const Args& a, float* w, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = a.codes + n * a.row_bytes;
    Decoder<C, KIND> dec(a, n);
    const __m256 s = _mm256_set1_ps(dec.final_scale());
    for (int64_t g = 0; g < a.groups; ++g) {
      dec.group(g);
      for (int64_t k = g * a.group; k < (g + 1) * a.group; k += 8)
        _mm256_storeu_ps(w + n * a.K + k, _mm256_mul_ps(dec(unpack8<C>(row + k * C / 8)), s));
    }
  }
}

using DequantFn = void (*)(const Args&, float*, int64_t, int64_t);

DequantFn pick_dequantize(int c, int64_t kind) {
  if (kind == AFFINE) {
    if (c == 2) return &dequantize_rows<2, AFFINE>;
    if (c == 4) return &dequantize_rows<4, AFFINE>;
    if (c == 8) return &dequantize_rows<8, AFFINE>;
  } else if (kind == TABLE) {
    if (c == 1) return &dequantize_rows<1, TABLE>;
    if (c == 2) return &dequantize_rows<2, TABLE>;
    if (c == 4) return &dequantize_rows<4, TABLE>;
    if (c == 8) return &dequantize_rows<8, TABLE>;
  } else if (kind == FP8_E4M3 && c == 8) {
    return &dequantize_rows<8, FP8_E4M3>;
  } else if (kind == FP8_E5M2 && c == 8) {
    return &dequantize_rows<8, FP8_E5M2>;
  }
  return nullptr;
}

bool has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#else
bool has_avx2() { return false; }
#endif

// ------------------------------------------------------------------ the operators

Args make_args(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& zero,
               const at::Tensor& offset, const at::Tensor& table, int64_t c, int64_t group_size, int64_t kind, int64_t flip,
               int64_t n, int64_t k) {
  TORCH_CHECK(c == 1 || c == 2 || c == 4 || c == 8, "container bits must be 1, 2, 4 or 8, got ", c);
  TORCH_CHECK(kind >= AFFINE && kind <= FP8_E5M2, "unknown weight kind ", kind);
  TORCH_CHECK(codes.scalar_type() == at::kByte && codes.is_contiguous() && codes.dim() == 2,
              "codes must be a contiguous 2-D uint8 tensor");
  TORCH_CHECK(codes.size(0) == n && codes.size(1) * 8 == k * c, "codes of shape ", codes.sizes(),
              " do not hold (", n, ", ", k, ") ", c, "-bit codes");
  Args a{};
  a.K = k;
  a.N = n;
  a.codes = codes.data_ptr<uint8_t>();
  a.row_bytes = codes.size(1);
  a.groups = 1;
  a.group = k;
  if (kind == AFFINE) {
    TORCH_CHECK(group_size > 0 && k % group_size == 0, "group size ", group_size, " must divide ", k);
    a.groups = k / group_size;
    a.group = group_size;
    TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == n * a.groups,
                "affine scales must be float32 (N, K / group_size)");
    TORCH_CHECK(zero.scalar_type() == at::kInt && zero.is_contiguous() && zero.numel() == n * a.groups,
                "affine zero points must be int32 (N, K / group_size)");
    a.scale = scale.data_ptr<float>();
    a.zero = zero.data_ptr<int32_t>();
    if (offset.numel() > 0) {
      TORCH_CHECK(offset.scalar_type() == at::kFloat && offset.is_contiguous() && offset.numel() == n * a.groups,
                  "affine offsets must be float32 (N, K / group_size)");
      a.offset = offset.data_ptr<float>();
    }
    TORCH_CHECK(flip == 0 || flip == (int64_t{1} << (c - 1)), "flip must be 0 or 2^(c-1)");
    a.flip = static_cast<int32_t>(flip);
  } else if (kind == TABLE) {
    TORCH_CHECK(table.scalar_type() == at::kFloat && table.is_contiguous() && table.dim() == 2 &&
                    table.size(1) == (int64_t{1} << c) && (table.size(0) == 1 || table.size(0) == n),
                "a code table must be float32 (1 or N, 2^c)");
    a.table = table.data_ptr<float>();
    a.table_rows = table.size(0);
    a.table_size = table.size(1);
  } else {
    TORCH_CHECK(c == 8, "fp8 codes are 8-bit");
    TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == n,
                "fp8 scales must be float32 (N)");
    a.scale = scale.data_ptr<float>();
  }
  return a;
}

int64_t grain_rows(int64_t k) { return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(k, 1)); }

at::Tensor linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scale,
                  const at::Tensor& zero, const at::Tensor& offset, const at::Tensor& table,
                  const std::optional<at::Tensor>& bias, int64_t c, int64_t group_size,
                  int64_t kind, int64_t flip, int64_t n, int64_t k) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && x.dim() == 2 && x.size(1) == k,
              "x must be a contiguous float32 (batch, ", k, ") tensor");
  Args a = make_args(codes, scale, zero, offset, table, c, group_size, kind, flip, n, k);
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == n,
                "bias must be float32 (N)");
    a.bias = bias->data_ptr<float>();
  }
  at::Tensor y = at::empty({x.size(0), n}, x.options());
  const int64_t batch = x.size(0);
  if (batch == 0 || n == 0) return y;
  const float* x0 = x.data_ptr<float>();
  float* y0 = y.data_ptr<float>();
#ifdef ZP_X86
  const bool vector = has_avx2() && k % 8 == 0 && a.group % 8 == 0;
#else
  const bool vector = false;
#endif
  for (int64_t b0 = 0; b0 < batch; b0 += 8) {  // up to 8 rows of x held in registers
    Args part = a;
    part.x = x0 + b0 * k;
    part.y = y0 + b0 * n;
    part.batch = std::min<int64_t>(8, batch - b0);
#ifdef ZP_X86
    RowsFn fn = vector ? pick(static_cast<int>(c), kind, part.batch, a.group) : nullptr;
#else
    void* fn = nullptr;
#endif
    at::parallel_for(0, n, grain_rows(k), [&](int64_t n0, int64_t n1) {
#ifdef ZP_X86
      if (fn) return fn(part, n0, n1);
#endif
      rows_scalar(part, static_cast<int>(c), kind, n0, n1);
    });
  }
  return y;
}

at::Tensor dequantize(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& zero,
                      const at::Tensor& offset, const at::Tensor& table, int64_t c, int64_t group_size, int64_t kind,
                      int64_t flip, int64_t n, int64_t k) {
  Args a = make_args(codes, scale, zero, offset, table, c, group_size, kind, flip, n, k);
  at::Tensor w = at::empty({n, k}, codes.options().dtype(at::kFloat));
  float* w0 = w.data_ptr<float>();
#ifdef ZP_X86
  DequantFn fn = has_avx2() && k % 8 == 0 && a.group % 8 == 0 ? pick_dequantize(static_cast<int>(c), kind) : nullptr;
#else
  void* fn = nullptr;
#endif
  at::parallel_for(0, n, grain_rows(k), [&](int64_t n0, int64_t n1) {
#ifdef ZP_X86
    if (fn) return fn(a, w0, n0, n1);
#endif
    dequantize_scalar(a, static_cast<int>(c), kind, w0, n0, n1);
  });
  return w;
}

// Many rows of x: decode a tile of W's rows into a buffer that stays in the core's cache and
// let torch's GEMM (MKL / oneDNN) multiply it, tile by tile: yᵀ[tile] = W[tile] · xᵀ.
at::Tensor linear_tiled(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scale,
                        const at::Tensor& zero, const at::Tensor& offset, const at::Tensor& table,
                        const std::optional<at::Tensor>& bias, int64_t c, int64_t group_size,
                        int64_t kind, int64_t flip, int64_t n, int64_t k, int64_t tile) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2 && x.size(1) == k,
              "x must be a float32 (batch, ", k, ") tensor");
  TORCH_CHECK(tile > 0, "tile must be positive");
  Args a = make_args(codes, scale, zero, offset, table, c, group_size, kind, flip, n, k);
  at::Tensor yt = at::empty({n, x.size(0)}, x.options());
  const at::Tensor xt = x.t();
#ifdef ZP_X86
  DequantFn fn = has_avx2() && k % 8 == 0 && a.group % 8 == 0 ? pick_dequantize(static_cast<int>(c), kind) : nullptr;
#else
  void* fn = nullptr;
#endif
  // Tensor operations stay in the calling thread (intra-op workers do not inherit its
  // InferenceMode, and an inference tensor may only be updated inside it); the workers only
  // decode rows into the raw buffer, and the GEMM parallelises itself.
  std::vector<float> buf(static_cast<size_t>(tile * k));
  for (int64_t r0 = 0; r0 < n; r0 += tile) {
    const int64_t rows = std::min(tile, n - r0);
    // the decoders index rows from the start of W; shift the output so row r0 lands at 0
    float* w = buf.data() - r0 * k;
    at::parallel_for(r0, r0 + rows, grain_rows(k), [&](int64_t n0, int64_t n1) {
#ifdef ZP_X86
      if (fn) return fn(a, w, n0, n1);
#endif
      dequantize_scalar(a, static_cast<int>(c), kind, w, n0, n1);
    });
    at::Tensor out = yt.narrow(0, r0, rows);
    at::mm_out(out, at::from_blob(buf.data(), {rows, k}, x.options()), xt);
  }
  at::Tensor y = yt.t().contiguous();
  if (bias.has_value() && bias->defined()) y.add_(*bias);
  return y;
}

int64_t vector_isa() { return has_avx2() ? 2 : 0; }

}  // namespace

TORCH_LIBRARY(zeropoint_wo, m) {
  m.def("linear(Tensor x, Tensor codes, Tensor scale, Tensor zero, Tensor offset, Tensor table, Tensor? bias, "
        "int container, int group_size, int kind, int flip, int n, int k) -> Tensor", &linear);
  m.def("dequantize(Tensor codes, Tensor scale, Tensor zero, Tensor offset, Tensor table, int container, "
        "int group_size, int kind, int flip, int n, int k) -> Tensor", &dequantize);
  m.def("linear_tiled(Tensor x, Tensor codes, Tensor scale, Tensor zero, Tensor offset, Tensor table, "
        "Tensor? bias, int container, int group_size, int kind, int flip, int n, int k, int tile) -> Tensor",
        &linear_tiled);
  m.def("vector_isa() -> int", &vector_isa);
}
