"""Calibrate MobileNetV2 (ImageNet weights) on several processes: each rank sees its share of the
images, and every rank ends with the same int8 model — the one one process calibrated on all of
them would give, bit for bit.

    torchrun --nproc-per-node 2 examples/distributed_calibration.py [--quick]

torchrun starts the processes and gives each its RANK, WORLD_SIZE and rendezvous address; on
several machines run it on each with ``--nnodes N --node-rank I --rdzv-backend c10d
--rdzv-endpoint HOST:PORT`` (see the README's "Scaling out"). On GPUs use the "nccl" backend and
move the model and batches to ``cuda:LOCAL_RANK``; zeropoint reduces the statistics over gloo.
"""

import datetime
import hashlib
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import zeropoint as zp
from demo.zoo.mobilenet_v2 import load_mobilenet_v2
from demo.zoo.views import calibration_views, evaluation_views

quick = "--quick" in sys.argv
torch.set_num_threads(1)  # one core per process here; the same float sums on every rank
# a rank that fails or stops answering makes the others raise within this timeout
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
rank, world = dist.get_rank(), dist.get_world_size()

model = load_mobilenet_v2().eval()
calibration = TensorDataset(calibration_views(16 if quick else 64).images)
loader = DataLoader(
    calibration, batch_size=4, sampler=DistributedSampler(calibration, shuffle=False)
)

prepared = zp.prepare(model, zp.int8_static("entropy"))
batches = zp.calibrate_model(prepared, loader, progress=False)  # this rank's share only
stats = zp.distributed.sync_model(prepared)  # every rank's histograms; zp.convert would do it too
model_q = zp.convert(prepared)  # (already synchronised: nothing is exchanged again)
print(
    f"rank {rank}/{world}: calibrated on {batches} batches; synchronised {stats.observers} "
    f"observers with {stats.collectives} collectives, {stats.bytes_sent / 1e6:.2f} MB sent, "
    f"{stats.seconds:.2f} s"
)

digest = hashlib.sha256()
for name, t in sorted(model_q.state_dict().items()):
    digest.update(name.encode() + t.contiguous().numpy().tobytes())
digests: list[str | None] = [None] * world
dist.all_gather_object(digests, digest.hexdigest())

# evaluation, sharded too: top-1 agreement with fp32, counts summed over the ranks
views = TensorDataset(evaluation_views(32 if quick else 256).images)
agree = torch.zeros(2)
with torch.no_grad():
    for (x,) in DataLoader(views, batch_size=8, sampler=DistributedSampler(views, shuffle=False)):
        agree += torch.tensor([float((model(x).argmax(1) == model_q(x).argmax(1)).sum()), len(x)])
agree = zp.distributed.all_reduce_sum(agree)
if rank == 0:
    print(f"converted models identical on all {world} ranks: {len(set(digests)) == 1}")
    print(
        f"int8 top-1 agreement with fp32: {100 * agree[0] / agree[1]:.1f}% of {int(agree[1])} views"
    )
dist.destroy_process_group()
