"""Cost of one grid-wide barrier (cooperative_groups grid.sync) on this GPU, and the SM clock under load.

    python benchmarks/bench_grid_sync.py

decoder_layers separates its phases with grid.sync(); this is the floor under each phase. A cooperative
kernel of 128-thread blocks runs 1 and 1001 barriers; the difference / 1000 is the cost of one barrier
(CUDA events, median of 5). The clock comes from one thread's dependent FMA chain: clock64() cycles over
%globaltimer nanoseconds.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import card_name  # noqa: E402

_SRC = r"""
#include <cooperative_groups.h>
namespace cg = cooperative_groups;
extern "C" __global__ void barriers(int n, int* out) {
  cg::grid_group g = cg::this_grid();
  for (int i = 0; i < n; ++i) g.sync();
  if (threadIdx.x == 0 && blockIdx.x == 0) out[0] = n;
}
extern "C" __global__ void clock_rate(long long n, unsigned long long* out) {
  unsigned long long t0, t1;
  const long long c0 = clock64();
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  float x = 1.0f;
  for (long long i = 0; i < n; ++i) x = fmaf(x, 0.999999f, 1e-7f);
  const long long c1 = clock64();
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t1));
  out[0] = c1 - c0;
  out[1] = t1 - t0;
  out[2] = __float_as_uint(x);
}
"""


def main() -> None:
    import cupy as cp

    print(f"card: {card_name()}")
    mod = cp.RawModule(code=_SRC, options=("-std=c++17",), enable_cooperative_groups=True)
    barriers, clock_rate = mod.get_function("barriers"), mod.get_function("clock_rate")
    out = cp.zeros(1, dtype=cp.int32)

    def ms(blocks: int, n: int) -> float:
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        barriers((blocks,), (128,), (cp.int32(n), out))
        end.record()
        end.synchronize()
        return cp.cuda.get_elapsed_time(start, end)

    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    for per_sm in (1, 2, 3):
        blocks = sms * per_sm
        ms(blocks, 1001)  # warm-up
        us = statistics.median((ms(blocks, 1001) - ms(blocks, 1)) for _ in range(5)) / 1000 * 1e3
        print(f"grid.sync, {blocks} blocks x 128 threads ({per_sm} per SM): {us:.2f} us per barrier")
    o = cp.zeros(3, dtype=cp.uint64)
    clock_rate((1,), (1,), (cp.int64(2_000_000), o))
    cp.cuda.Device().synchronize()
    print(f"SM clock under a dependent FMA chain: {int(o[0]) / int(o[1]):.2f} GHz")


if __name__ == "__main__":
    main()
