"""2-bit weights and activations with LSQ quantization-aware training (first/last layer 8-bit).

python examples/digits_qat_w2a2.py [--quick]
"""

import sys

import torch

import zeropoint as zp
from demo.zoo.digits import DigitsCNN, accuracy, load_digits_data, train

quick = "--quick" in sys.argv
torch.manual_seed(0)
data = load_digits_data()
model = train(DigitsCNN(), data, epochs=3 if quick else 20)
config = zp.w2a2_qat("lsq")

rtn = zp.quantize_static(
    model, data.calibration_batches(), config.with_(learnable=None, activation_observer="minmax")
)
print(
    f"fp32 {accuracy(model, data.x_test, data.y_test):.2f}%  round-to-nearest W2A2 {accuracy(rtn, data.x_test, data.y_test):.2f}%"
)

qat = zp.prepare_qat(model, config, example_inputs=data.x_train[:256])
train(qat, data, epochs=2 if quick else 25, lr=3e-3)  # any training loop works
model_q = zp.convert(qat)
print(f"LSQ QAT W2A2 {accuracy(model_q, data.x_test, data.y_test):.2f}%")
