"""Dynamic int8 of the real all-MiniLM-L6-v2 sentence encoder, against fp32 and torch.ao.

python examples/minilm_dynamic_int8.py [--quick]
"""

import sys

import zeropoint as zp
from demo.peers import torch_ao_dynamic_int8
from demo.zoo.minilm import load_minilm
from demo.zoo.sentences import CALIBRATION, SENTENCES, mean_cosine, nearest_neighbour_agreement

quick = "--quick" in sys.argv
model = load_minilm()
sentences = list(SENTENCES[::5] if quick else SENTENCES)
ref = model.encode(sentences, batch_size=32, convert_to_tensor=True)

model_q = zp.quantize_dynamic(model, calib_data=lambda m: m.encode(list(CALIBRATION)))
peer = torch_ao_dynamic_int8(model)
for name, m in (("zeropoint int8", model_q), ("torch.ao int8", peer)):
    emb = m.encode(sentences, batch_size=32, convert_to_tensor=True)  # still a SentenceTransformer
    mean, worst = mean_cosine(ref, emb)
    print(
        f"{name:15} cosine mean {mean:.4f} min {worst:.4f}  NN agreement {nearest_neighbour_agreement(ref, emb):.1%}"
    )
