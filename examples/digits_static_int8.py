"""Static int8 on a small CNN: calibrate, run in integers, export to ONNX Runtime, save and load.

python examples/digits_static_int8.py [--quick]
"""

import sys
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch

import zeropoint as zp
from demo.zoo.digits import DigitsCNN, accuracy, load_digits_data, train

quick = "--quick" in sys.argv
torch.manual_seed(0)
data = load_digits_data()
model = train(DigitsCNN(), data, epochs=3 if quick else 20)
print(f"fp32 accuracy {accuracy(model, data.x_test, data.y_test):.2f}%")

model_q = zp.quantize_static(model, data.calibration_batches(), zp.int8_static("entropy"))
print(f"int8 simulation {accuracy(model_q, data.x_test, data.y_test):.2f}%")

program = zp.to_integer(model_q, data.x_test[:1])  # int8 in, int32 accumulators, int8 out
print(program.summary())
print(f"integer engine {accuracy(program, data.x_test, data.y_test):.2f}%")

with tempfile.TemporaryDirectory() as d:
    path = zp.export_onnx(model_q, Path(d) / "digits_int8.onnx", data.x_test[:1])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = torch.from_numpy(session.run(None, {"x": data.x_test.numpy()})[0])
    print(f"ONNX Runtime (QDQ) {100 * (logits.argmax(1) == data.y_test).float().mean():.2f}%")
    zp.save(model_q, Path(d) / "ckpt")  # safetensors + JSON encodings, no pickle
    restored = zp.load(Path(d) / "ckpt", DigitsCNN())
    print("reloaded model identical:", torch.equal(restored(data.x_test), model_q(data.x_test)))
