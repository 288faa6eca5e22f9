"""Supplement: only the final checkpoints exist, so re-train a fresh world model (same config, seed 0) OFFLINE on
cp_v3norm's replay, emulating the online schedule (update u samples uniform 32-step windows from the first
1000 + 5u steps), up to step 11,650 (collapse onset) and on to 20,000; at both points measure the posterior discount
at theta- and x-terminal steps and the posterior |x| reconstruction error. World model only (no actor/critic)."""
import sys, time, json; sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from common import *
run = RUNS["cp_v3norm"]
torch.manual_seed(0); rng = np.random.default_rng(0)
cfg = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
agent = Agent({"vector": ((4,), np.float32)}, ActionSpace(True, 2), cfg)
eps, _ = load_episodes(run)
files = sorted(p for p in (run / "replay").iterdir() if p.suffix == ".npz")
D = {}
for p in files:
    with np.load(p) as z:
        for k in z.files: D.setdefault(k, []).append(z[k])
D = {k: np.concatenate(v) for k, v in D.items()}
T, Bsz = cfg.batch_length, cfg.batch_size


def evaluate(upto):
    agent.eval(); r = {}
    with torch.no_grad():
        for label, f in [("theta-terminal", lambda e: e["cause"] == "theta"), ("x-terminal", lambda e: e["cause"] == "x")]:
            d, xe = [], []
            for e in eps:
                if e["end_step"] <= upto and f(e):
                    dec, _, disc, _, _ = heads(agent, filter_full(agent, e))
                    d.append(float(disc[-1])); xe.append(float(abs(dec[-1, 0] - e["vector"][-1, 0])))
            r[label] = {"n": len(d), "disc_at_terminal": float(np.mean(d)), "frac<0.5": float(np.mean(np.array(d) < 0.5)), "x_recon_err": float(np.mean(xe))}
        # x reconstruction error on all non-terminal steps seen so far, by |x|
        allx, err = [], []
        for e in eps:
            if e["end_step"] <= upto:
                dec, _, _, _, _ = heads(agent, filter_full(agent, e)); allx.append(np.abs(e["vector"][:, 0])); err.append(np.abs(dec[:, 0].numpy() - e["vector"][:, 0]))
        allx, err = np.concatenate(allx), np.concatenate(err)
        for lo, hi in [(0, .5), (.5, 1), (1, 1.5), (1.5, 2), (2, 2.45)]:
            s = (allx >= lo) & (allx < hi); r[f"x_recon_mae_{lo}-{hi}"] = float(err[s].mean()) if s.any() else None
    agent.train(); return r


out, t0, u = {}, time.time(), 0
for stop in (11650, 20000):
    while 1000 + 5 * u <= stop:
        avail = 1000 + 5 * u
        starts = rng.integers(0, avail - T + 1, size=Bsz)
        batch = {k: np.stack([v[s:s + T] for s in starts], 1).copy() for k, v in D.items()}
        batch["is_first"][0] = True; batch["action"][0] = 0
        agent.train_model(agent.wm.preprocess(batch)); u += 1
    out[f"upto_{stop}"] = {"updates": u, **evaluate(stop)}
    print(stop, u, f"{time.time() - t0:.0f}s", json.dumps(out[f"upto_{stop}"]), flush=True)
json.dump(out, open("/tmp/cp_diag/offline_wm.json", "w"), indent=1)
