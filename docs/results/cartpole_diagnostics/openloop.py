"""Parts 1 and 2: open-loop prediction error with the real actions, and termination (discount) prediction."""
import sys, json, time; sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from common import *
from dreamer_fast.rssm import RSSMState

C, H = 8, 15
HS = [1, 5, 10, 15]
BINS = [(0, .5), (.5, 1), (1, 1.5), (1.5, 2), (2, 2.45)]
DIMS = ["x", "x_dot", "theta", "theta_dot"]
out = {}
t_start = time.time()
for run_name, run in RUNS.items():
    torch.manual_seed(0)
    agent, cfg, _ = load_agent(run)
    eps_all, _ = load_episodes(run)
    res_run = {}
    for gname, eps in groups(eps_all).items():
        t0s = [(i, t) for i, e in enumerate(eps) for t in range(C - 1, len(e["vector"]) - 1)]
        N = len(t0s)
        res = {"episodes": len(eps), "windows": N, "ep_ranges": [(e["start"], e["end_step"], e["ret"], e["cause"]) for e in eps]}
        # ---- truth [N, H+1, 4] with validity mask
        true = np.zeros((N, H + 1, 4), np.float32); valid = np.zeros((N, H + 1), bool)
        acts = np.zeros((H, N, 2), np.float32); to_end = np.zeros(N, int); term_ep = np.zeros(N, bool)
        for n, (i, t) in enumerate(t0s):
            e = eps[i]; L = len(e["vector"]); m = min(H, L - 1 - t)
            true[n, :m + 1] = e["vector"][t:t + m + 1]; valid[n, :m + 1] = True
            acts[:m, n] = e["action"][t + 1:t + 1 + m]
            acts[m:, n, 0] = 1.0  # padding beyond the episode end (masked out)
            to_end[n] = L - 1 - t; term_ep[n] = e["terminal"]
        x0 = np.abs(true[:, 0, 0])
        variants = {}
        for variant in ("window", "full"):
            if variant == "window":
                start = filter_windows(agent, eps, t0s, C)
            else:
                posts = [filter_full(agent, e) for e in eps]
                start = RSSMState.stack([posts[i].at(t) for i, t in t0s]) if False else \
                    RSSMState(*(torch.stack([getattr(posts[i], f)[t] for i, t in t0s]) for f in ("deter", "stoch", "logits")))
            with torch.no_grad():
                prior = agent.wm.rssm.imagine_with_action(torch.tensor(acts), start)  # [H, N]
                dec0, _, disc0, _, _ = heads(agent, start)
                dec, rew, disc, _, _ = heads(agent, prior)
            pred = torch.cat([dec0[None], dec], 0).permute(1, 0, 2).numpy()  # [N, H+1, 4]
            pdisc = torch.cat([disc0[None], disc], 0).permute(1, 0).numpy()  # [N, H+1]
            err = np.abs(pred - true)
            table = {}
            for lo, hi in BINS:
                sel = (x0 >= lo) & (x0 < hi)
                row = {"n_start": int(sel.sum())}
                for h in [0] + HS:
                    v = sel & valid[:, h]
                    row[f"n_h{h}"] = int(v.sum())
                    for d, dn in enumerate(DIMS):
                        row[f"{dn}_h{h}"] = float(err[v, h, d].mean()) if v.any() else None
                    # persistence baseline for x: predict x(t0+h) = x(t0)
                    row[f"x_persist_h{h}"] = float(np.abs(true[v, h, 0] - true[v, 0, 0]).mean()) if v.any() else None
                    row[f"x_bias_h{h}"] = float((pred[v, h, 0] - true[v, h, 0]).mean() * 1) if v.any() else None
                    # outward-signed bias: < 0 means the model puts the cart closer to the centre than it really is
                    row[f"x_outbias_h{h}"] = float((np.sign(true[v, 0, 0]) * (pred[v, h, 0] - true[v, h, 0])).mean()) if v.any() else None
                table[f"{lo}-{hi}"] = row
            # ---- part 2: predicted discount at the true terminal step, reached open loop from h steps before
            term = {}
            for h in range(0, H + 1):
                sel = term_ep & (to_end == h)
                if sel.any():
                    term[f"terminal_reached_at_h{h}"] = {"n": int(sel.sum()), "disc_mean": float(pdisc[sel, h].mean()),
                        "disc_max": float(pdisc[sel, h].max()),
                        "cont_prob_prod_to_h": float(np.prod(pdisc[sel, 1:h + 1] / cfg.discount, 1).mean()) if h else None,
                        "pred_abs_x_at_term": float(np.abs(pred[sel, h, 0]).mean()),
                        "true_abs_x_at_term": float(np.abs(true[sel, h, 0]).mean())}
            # false alarms: imagined non-terminal steps (valid, not the episode's terminal step) with disc < 0.5
            nonterm = valid.copy(); nonterm[:, 0] = True
            for n in np.flatnonzero(term_ep & (to_end <= H)):
                nonterm[n, to_end[n]] = False
            fa = {}
            for lo, hi in BINS:
                xs = np.abs(true[:, :, 0])
                v = nonterm & (xs >= lo) & (xs < hi); v[:, 0] = False
                fa[f"{lo}-{hi}"] = {"n": int(v.sum()), "disc_mean": float(pdisc[v].mean()) if v.any() else None,
                                    "frac_below_0.5": float((pdisc[v] < 0.5).mean()) if v.any() else None}
            variants[variant] = {"openloop": table, "terminal": term, "nonterminal_imagined": fa}
            if variant == "window" and gname == "collapsed":
                np.savez(f"/tmp/cp_diag/openloop_{run_name}_{gname}.npz", pred=pred, true=true, valid=valid, x0=x0)
            if variant == "window" and gname == "good":
                np.savez(f"/tmp/cp_diag/openloop_{run_name}_{gname}.npz", pred=pred, true=true, valid=valid, x0=x0)
        # ---- part 2b: posterior (filtered from the episode start) discount on the last steps of each episode
        post_tail = {}
        for k in [0, 1, 2, 3, 5, 10, 20]:
            vals, xs = [], []
            for e in eps:
                p = filter_full(agent, e) if True else None
                _, _, d, _, _ = heads(agent, p.at(slice(len(e["vector"]) - 1 - k, len(e["vector"]) - k)))
                vals.append(float(d[0])); xs.append(float(abs(e["vector"][-1 - k, 0])))
            post_tail[f"k{k}"] = {"disc_mean": float(np.mean(vals)), "disc_min": float(np.min(vals)),
                                  "disc_max": float(np.max(vals)), "abs_x_mean": float(np.mean(xs)),
                                  "target": 0.0 if (k == 0 and all(e["terminal"] for e in eps)) else cfg.discount}
        res["variants"] = variants
        res["posterior_tail"] = post_tail
        res_run[gname] = res
        print(run_name, gname, "episodes", len(eps), "windows", N, f"{time.time() - t_start:.0f}s", flush=True)
    out[run_name] = res_run
json.dump(out, open("/tmp/cp_diag/openloop.json", "w"), indent=1)
print("done", time.time() - t_start)
