import sys; sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from common import *
for name, run in RUNS.items():
    eps, n = load_episodes(run)
    print(name, "replay steps", n, "episodes", len(eps))
    ckpt = load_checkpoint(run / "checkpoint.pt"); print(" ckpt step", ckpt["step"], "updates", ckpt["updates"])
    for ep in eps:
        if ep["end_step"] > 7000:
            print(f"  ep start {ep['start']:6d} end {ep['end_step']:6d} ret {ep['ret']:5.0f} cause {ep['cause']:5s} "
                  f"max|x| {np.abs(ep['vector'][:,0]).max():.2f} final x {ep['vector'][-1,0]:+.2f} th {ep['vector'][-1,2]:+.3f}")
