"""Part 3b: pole-up action sequences. From real states with |x|>=1.5 (collapsed + good phase), run two linear
controllers in the TRUE env (closed loop on the true state) for H=30 steps: 'balance-only' (a = right iff
theta + 0.5 theta_dot > 0: keeps the pole up, lets the cart drift) and 'balance+center' (a = right iff
[1, 1.5, 18, 3].s > 0: keeps the pole up and recentres). The recorded action sequences are then fed open loop to
the world model (same start posterior) and the predicted discounts / x compared with the true outcome."""
import sys, json; sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from common import *
from dreamer_fast.rssm import RSSMState
import gymnasium

H = 30
CTRL = {"balance-only": np.array([0, 0, 1, 0.5]), "balance+center": np.array([1, 1.5, 18, 3])}
BINS = [(1.5, 2.0), (2.0, 2.45)]


def simulate(state, k):
    env = gymnasium.make("CartPole-v1").unwrapped
    env.reset(seed=0); env.state = np.array(state, np.float64); env.steps_beyond_terminated = None
    xs = np.full(H + 1, np.nan); xs[0] = state[0]; acts = np.zeros(H, int); term, cause = 0, None
    for h in range(1, H + 1):
        a = int(np.dot(k, env.state) > 0); acts[h - 1] = a
        obs, _, terminated, _, _ = env.step(a)
        xs[h] = obs[0]
        if terminated:
            term, cause = h, ("x" if abs(obs[0]) > 2.4 else "theta")
            acts[h:] = a
            break
    env.close()
    return xs, acts, term, cause


out = {}
for run_name, run in RUNS.items():
    torch.manual_seed(0)
    agent, cfg, _ = load_agent(run)
    eps_all, _ = load_episodes(run)
    res_run = {}
    for gname, eps in groups(eps_all).items():
        starts, states = [], []
        for i, e in enumerate(eps):
            post = filter_full(agent, e)
            for t in range(0, len(e["vector"]) - 1, 2):
                if abs(e["vector"][t, 0]) >= 1.5:
                    starts.append((i, t)); states.append(post.at(t))
        N = len(starts)
        start = RSSMState(*(torch.stack([getattr(s, f) for s in states]) for f in ("deter", "stoch", "logits")))
        x0 = np.array([eps[i]["vector"][t, 0] for i, t in starts]); sgn = np.sign(x0)
        res_g = {}
        for cname, k in CTRL.items():
            sims = [simulate(eps[i]["vector"][t], k) for i, t in starts]
            tx = np.stack([s[0] for s in sims]); acts = np.stack([s[1] for s in sims]); term = np.array([s[2] for s in sims])
            cause = np.array([s[3] for s in sims], dtype=object)
            A = torch.zeros(H, N, 2); A[torch.arange(H)[:, None], torch.arange(N)[None], torch.tensor(acts.T)] = 1.0
            with torch.no_grad():
                prior = agent.wm.rssm.imagine_with_action(A, start)
                dec, rew, disc, val, _ = heads(agent, prior)
            px = dec[..., 0].T.numpy(); pd = disc.T.numpy()
            cont = np.cumprod(pd / cfg.discount, 1)  # model P(alive after step h)
            for lo, hi in BINS:
                sel = (np.abs(x0) >= lo) & (np.abs(x0) < hi)
                if not sel.any():
                    continue
                xt = sel & (cause == "x")
                r = {"n": int(sel.sum()),
                     "true_term15": float(((term > 0) & (term <= 15))[sel].mean()), "true_term30": float((term > 0)[sel].mean()),
                     "true_x_cause_frac": float(xt[sel].mean()), "true_theta_cause_frac": float((cause == "theta")[sel].mean()),
                     "pred_term15": float(1 - cont[sel, 14].mean()), "pred_term30": float(1 - cont[sel, 29].mean()),
                     "pred_any_disc<0.5_15": float((pd[sel, :15] < 0.5).any(1).mean()),
                     "pred_any_disc<0.5_30": float((pd[sel, :30] < 0.5).any(1).mean())}
                if xt.any():  # x-terminated cases: the model at the true terminal step
                    idx = np.flatnonzero(xt); ts = term[idx]
                    r["xterm_n"] = int(len(idx)); r["xterm_true_step_mean"] = float(ts.mean())
                    r["xterm_pred_disc_at_true_term"] = float(pd[idx, ts - 1].mean())
                    r["xterm_pred_out_x_at_true_term"] = float((sgn[idx] * px[idx, ts - 1]).mean())
                    r["xterm_true_out_x_at_true_term"] = float((sgn[idx] * tx[idx, ts]).mean())
                    r["xterm_pred_alive_prob_at_true_term"] = float(cont[idx, ts - 1].mean())
                    r["xterm_pred_any_disc<0.5_within_3_of_true"] = float(np.mean([(pd[j, max(0, tt - 4):min(H, tt + 2)] < 0.5).any() for j, tt in zip(idx, ts)]))
                for h in (1, 5, 10, 15):
                    ok = sel & ~np.isnan(tx[:, h])
                    r[f"x_mae_h{h}"] = float(np.abs(px[ok, h - 1] - tx[ok, h]).mean()) if ok.any() else None
                    r[f"x_out_bias_h{h}"] = float((sgn[ok] * (px[ok, h - 1] - tx[ok, h])).mean()) if ok.any() else None
                res_g[f"{cname} {lo}-{hi}"] = r
                print(run_name, gname, cname, f"{lo}-{hi}", {a: round(b, 3) if isinstance(b, float) else b for a, b in r.items()}, flush=True)
        res_run[gname] = res_g
    out[run_name] = res_run
json.dump(out, open("/tmp/cp_diag/controllers.json", "w"), indent=1)
