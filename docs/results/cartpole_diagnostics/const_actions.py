"""Part 3: from real states with |x|>1.5, imagine 15 steps of constant 'push outward' vs 'push inward' and compare
with the true CartPole-v1 dynamics started from the same state (env.unwrapped.state = recorded observation)."""
import sys, json; sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from common import *
from dreamer_fast.rssm import RSSMState
import gymnasium

H = 15
BINS = [(1.5, 2.0), (2.0, 2.45)]


def simulate(state, a, H):
    env = gymnasium.make("CartPole-v1").unwrapped
    env.reset(seed=0)
    env.state = np.array(state, dtype=np.float64)
    env.steps_beyond_terminated = None
    xs = np.full(H + 1, np.nan); xs[0] = state[0]; term, cause = None, None
    for h in range(1, H + 1):
        obs, r, terminated, _, _ = env.step(a)
        xs[h] = obs[0]
        if terminated:
            term, cause = h, ("x" if abs(obs[0]) > 2.4 else "theta")
            break
    env.close()
    return xs, term, cause


out, raw = {}, {}
for run_name, run in RUNS.items():
    torch.manual_seed(0)
    agent, cfg, _ = load_agent(run)
    eps_all, _ = load_episodes(run)
    res_run = {}
    for gname, eps in groups(eps_all).items():
        starts, states = [], []
        for i, e in enumerate(eps):
            post = filter_full(agent, e)
            for t in range(0, len(e["vector"]) - 1, 2):  # every 2nd step, not the terminal step itself
                if abs(e["vector"][t, 0]) >= 1.5:
                    starts.append((i, t)); states.append(post.at(t))
        if not starts:
            continue
        N = len(starts)
        start = RSSMState(*(torch.stack([getattr(s, f) for s in states]) for f in ("deter", "stoch", "logits")))
        x0 = np.array([eps[i]["vector"][t, 0] for i, t in starts])
        sgn = np.sign(x0)
        _, _, _, v0, pi0 = heads(agent, start)
        p_out = np.where(sgn > 0, pi0[:, 1].numpy(), pi0[:, 0].numpy())  # actor's prob of pushing outward
        res_g = {}
        for direction in ("outward", "inward"):
            a_idx = np.where((sgn > 0) == (direction == "outward"), 1, 0)  # 1 = push right (+x)
            acts = torch.zeros(H, N, 2); acts[:, torch.arange(N), torch.tensor(a_idx)] = 1.0
            with torch.no_grad():
                prior = agent.wm.rssm.imagine_with_action(acts, start)
                dec, rew, disc, val, _ = heads(agent, prior)
            px = dec[..., 0].T.numpy(); pth = dec[..., 2].T.numpy(); pd = disc.T.numpy(); pr = rew.T.numpy(); pv = val.T.numpy()  # [N, H]
            cont = np.cumprod(np.concatenate([np.ones((N, 1)), pd / cfg.discount], 1), 1)  # P(alive before step h)
            surv15 = cont[:, -1]
            # model's 15-step return with slow-critic bootstrap: sum_h (prod_{j<h} disc_j) r_h + prod disc * V(s_15)
            w = np.cumprod(np.concatenate([np.ones((N, 1)), pd], 1), 1)  # w[:, h] = prod_{j<=h} disc (1-based)
            G_model = (w[:, :-1] * pr).sum(1) + w[:, -1] * pv[:, -1]
            G_model_nb = (w[:, :-1] * pr).sum(1)
            tx = np.zeros((N, H + 1)); term = np.zeros(N); cause = []
            for n, (i, t) in enumerate(starts):
                xs, tm, c = simulate(eps[i]["vector"][t], int(a_idx[n]), H)
                tx[n] = xs; term[n] = tm if tm else 0; cause.append(c)
            cause = np.array(cause, dtype=object)
            G_true_nb = np.array([sum(cfg.discount ** (h - 1) for h in range(1, (int(tm) if tm else H) + 1)) for tm in term])
            for lo, hi in BINS:
                sel = (np.abs(x0) >= lo) & (np.abs(x0) < hi)
                if not sel.any():
                    continue
                r = {"n": int(sel.sum()),
                     "actor_p_outward": float(p_out[sel].mean()),
                     "true_term15": float((term[sel] > 0).mean()),
                     "true_term_step_mean": float(term[sel][term[sel] > 0].mean()) if (term[sel] > 0).any() else None,
                     "true_frac_x_cause": float(np.mean(cause[sel] == "x")), "true_frac_theta_cause": float(np.mean(cause[sel] == "theta")),
                     "pred_term15": float(1 - surv15[sel].mean()),
                     "pred_min_disc": float(pd[sel].min(1).mean()),
                     "pred_frac_any_disc<0.5": float((pd[sel] < 0.5).any(1).mean()),
                     "pred_frac_|x|>2.4": float((np.abs(px[sel]) > 2.4).any(1).mean()),
                     "pred_first_disc<0.5_step": float(np.where((pd[sel] < 0.5).any(1), (pd[sel] < 0.5).argmax(1) + 1, np.nan)[(pd[sel] < 0.5).any(1)].mean()) if (pd[sel] < 0.5).any() else None,
                     "pred_|theta|_at_first_term": float(np.abs(pth[sel][(pd[sel] < 0.5).any(1), (pd[sel] < 0.5).argmax(1)[(pd[sel] < 0.5).any(1)]]).mean()) if (pd[sel] < 0.5).any() else None,
                     "pred_out_x_at_first_term": float((sgn[sel][(pd[sel] < 0.5).any(1)] * px[sel][(pd[sel] < 0.5).any(1), (pd[sel] < 0.5).argmax(1)[(pd[sel] < 0.5).any(1)]]).mean()) if (pd[sel] < 0.5).any() else None,
                     "G_model_15step_noboot": float(G_model_nb[sel].mean()), "G_true_15step": float(G_true_nb[sel].mean()),
                     "G_model_with_critic": float(G_model[sel].mean()), "V_slow_start": float(v0[sel].mean())}
                for h in (1, 5, 10, 15):
                    ok = sel & ~np.isnan(tx[:, h])
                    r[f"n_h{h}"] = int(ok.sum())
                    r[f"x_mae_h{h}"] = float(np.abs(px[ok, h - 1] - tx[ok, h]).mean()) if ok.any() else None
                    r[f"x_true_out_h{h}"] = float((sgn[ok] * tx[ok, h]).mean()) if ok.any() else None  # outward-signed x
                    r[f"x_pred_out_h{h}"] = float((sgn[ok] * px[ok, h - 1]).mean()) if ok.any() else None
                res_g[f"{direction} {lo}-{hi}"] = r
                print(run_name, gname, direction, f"{lo}-{hi}", {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}, flush=True)
            raw[f"{run_name}/{gname}/{direction}"] = dict(x0=x0, px=px, pd=pd, tx=tx, term=term)
        res_run[gname] = res_g
    out[run_name] = res_run
json.dump(out, open("/tmp/cp_diag/const_actions.json", "w"), indent=1)
np.savez("/tmp/cp_diag/const_actions_raw.npz", **{k.replace("/", "__") + "__" + a: v for k, d in raw.items() for a, v in d.items()})
