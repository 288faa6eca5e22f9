"""Part 2b: posterior discount at every terminal step of each run's whole replay, by cause and by phase (final model)."""
import sys, json; sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from common import *
out = {}
for run_name, run in RUNS.items():
    torch.manual_seed(0)
    agent, cfg, _ = load_agent(run)
    eps, _ = load_episodes(run)
    rows = []
    for e in eps:
        if not e["terminal"]:
            continue
        post = filter_full(agent, e)
        dec, _, d, _, _ = heads(agent, post)
        d = d.numpy()
        rx = float(abs(dec[-1, 0]))
        rows.append((e["end_step"], e["cause"], float(d[-1]), float(d[-2]), float(d[:-1].mean()), float(abs(e["vector"][-1, 0])), float(abs(e["vector"][-1, 2])), rx))
    res = {}
    for label, f in [("theta-terminal, all", lambda r: r[1] == "theta"),
                     ("x-terminal, step<11.3k", lambda r: r[1] == "x" and r[0] < 11300),
                     ("x-terminal, step>=11.3k", lambda r: r[1] == "x" and r[0] >= 11300)]:
        sel = [r for r in rows if f(r)]
        if sel:
            a = np.array([r[2] for r in sel])
            res[label] = {"n": len(sel), "disc_at_terminal_mean": float(a.mean()), "median": float(np.median(a)),
                          "frac_below_0.5": float((a < 0.5).mean()), "true_abs_x": float(np.mean([r[5] for r in sel])), "recon_abs_x": float(np.mean([r[7] for r in sel])), "true_abs_theta": float(np.mean([r[6] for r in sel])), "disc_prev_step_mean": float(np.mean([r[3] for r in sel])),
                          "first_end_step": min(r[0] for r in sel), "last_end_step": max(r[0] for r in sel)}
    out[run_name] = res
    for k, v in res.items():
        print(run_name, k, {a: round(b, 3) if isinstance(b, float) else b for a, b in v.items()})
json.dump(out, open("/tmp/cp_diag/termination.json", "w"), indent=1)
