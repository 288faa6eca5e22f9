"""Builds /tmp/cp_diag/tables.md and model_error.png from the JSON outputs of the other scripts."""
import json, numpy as np
import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
D = "/tmp/cp_diag/"
ol, te, ca, ct, ow = (json.load(open(D + f)) for f in ("openloop.json", "termination.json", "const_actions.json", "controllers.json", "offline_wm.json"))
f = lambda v, p=3: "–" if v is None else f"{v:.{p}f}"
L = []
L.append("### T1. Open-loop error with the real actions (context 8 steps, then 15 imagined steps), MAE, final model\n")
L.append("bin = |x| at the last observed step. h0 = posterior reconstruction. `pers` = persistence baseline |x(t+15)-x(t)|. "
         "`outbias` = mean of sign(x0)·(pred−true) at h15 (<0: model places the cart closer to the centre than reality). n = windows (n@h15 smaller near the edge: episodes end).\n")
for run in ol:
    L.append(f"\n**{run}**\n")
    L.append("| group | |x| bin | n (n@h15) | x h0 | x h1 | x h5 | x h10 | x h15 | pers h15 | outbias h15 | θ h1 | θ h5 | θ h10 | θ h15 | ẋ h5 / h15 | θ̇ h5 / h15 |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for g in ol[run]:
        for b, r in ol[run][g]["variants"]["window"]["openloop"].items():
            if not r["n_start"]:
                L.append(f"| {g} | {b} | 0 | | | | | | | | | | | | | |"); continue
            L.append(f"| {g} | {b} | {r['n_start']} ({r['n_h15']}) | {f(r['x_h0'])} | {f(r['x_h1'])} | {f(r['x_h5'])} | {f(r['x_h10'])} | {f(r['x_h15'])} | {f(r['x_persist_h15'])} | {f(r['x_outbias_h15'])} | "
                     f"{f(r['theta_h1'])} | {f(r['theta_h5'])} | {f(r['theta_h10'])} | {f(r['theta_h15'])} | {f(r['x_dot_h5'],2)} / {f(r['x_dot_h15'],2)} | {f(r['theta_dot_h5'],2)} / {f(r['theta_dot_h15'],2)} |")
L.append("\nSame with the posterior filtered from the episode start (as when acting) instead of an 8-step context: x MAE h1 / h15, outward bias h15\n")
L.append("| run | group | <0.5 | 0.5-1 | 1-1.5 | 1.5-2 | 2-2.45 |"); L.append("|---|---|---|---|---|---|---|")
for run in ol:
    for g in ol[run]:
        cells = [f"{f(r['x_h1'],2)} / {f(r['x_h15'],2)} ({f(r['x_outbias_h15'],2)})" if r["n_start"] else "–" for r in ol[run][g]["variants"]["full"]["openloop"].values()]
        L.append(f"| {run} | {g} | " + " | ".join(cells) + " |")

L.append("\n### T2. Termination: predicted discount sigmoid(discount head) (target 0.99 alive, 0 at a terminal step)\n")
L.append("a) Posterior (filtered from episode start) at the terminal step, every terminal episode of the whole replay, by cause:\n")
L.append("| run | terminal type | n | disc at terminal (mean / median) | frac < 0.5 | disc one step before | true |x| / recon |x| at terminal |")
L.append("|---|---|---|---|---|---|---|")
for run, rr in te.items():
    for k, r in rr.items():
        L.append(f"| {run} | {k} | {r['n']} | {f(r['disc_at_terminal_mean'])} / {f(r['median'])} | {f(r['frac_below_0.5'],2)} | {f(r['disc_prev_step_mean'])} | {f(r['true_abs_x'],2)} / {f(r['recon_abs_x'],2)} |")
L.append("\nb) Collapsed phase (last 30 episodes, all end with |x|>2.4): posterior discount k steps before the end (mean) and mean |x| there:\n")
L.append("| run | k=0 (terminal) | 1 | 2 | 3 | 5 | 10 | 20 |"); L.append("|---|---|---|---|---|---|---|---|")
for run in ol:
    pt = ol[run]["collapsed"]["posterior_tail"]
    L.append(f"| {run} | " + " | ".join(f"{f(pt[k]['disc_mean'])} (|x| {f(pt[k]['abs_x_mean'],2)})" for k in ["k0", "k1", "k2", "k3", "k5", "k10", "k20"]) + " |")
L.append("\nc) Open loop with the real actions: predicted discount at the imagined step that is the real terminal step, reached h steps after the last observed one; "
         "`alive` = Π (disc/0.99) up to and including that step (model's probability the episode is still running); `x pred/true` = decoded |x| there:\n")
L.append("| run | h | n | disc at true terminal step | alive prob | |x| pred / true |"); L.append("|---|---|---|---|---|---|")
for run in ol:
    tr = ol[run]["collapsed"]["variants"]["window"]["terminal"]
    for h in (1, 3, 5, 10, 15):
        r = tr.get(f"terminal_reached_at_h{h}")
        if r:
            L.append(f"| {run} | {h} | {r['n']} | {f(r['disc_mean'])} | {f(r['cont_prob_prod_to_h'])} | {f(r['pred_abs_x_at_term'],2)} / {f(r['true_abs_x_at_term'],2)} |")
L.append("\nd) False alarms: imagined (open-loop, real actions) non-terminal steps, mean predicted discount and fraction < 0.5, by true |x| (collapsed phase):\n")
L.append("| run | <0.5 | 0.5-1 | 1-1.5 | 1.5-2 | 2-2.45 |"); L.append("|---|---|---|---|---|---|")
for run in ol:
    fa = ol[run]["collapsed"]["variants"]["window"]["nonterminal_imagined"]
    L.append(f"| {run} | " + " | ".join(f"{f(r['disc_mean'])} ({f(r['frac_below_0.5'],3)})" for r in fa.values()) + " |")

L.append("\n### T3. Constant actions for 15 steps from real states with |x|≥1.5 (every 2nd step), model (imagined from the acting posterior) vs true CartPole-v1 from the same state\n")
L.append("`first term` = mean first imagined step with disc<0.5 (model) / true termination step; `x cause` = share of true terminations caused by |x|>2.4 "
         "(the rest: pole fall); at the model's first predicted termination: decoded |θ| and outward x; `G15` = Σ_h Π_{j<h} disc_j · r_h over 15 steps, model vs true (reward 1/step, γ=0.99); `p_out` = actor's probability of pushing outward there.\n")
L.append("| run | group | push | |x| bin | n | p_out | true term step | true x cause | model first term step | model |θ| / out-x at it | G15 model / true |")
L.append("|---|---|---|---|---|---|---|---|---|---|---|")
for run in ca:
    for g in ca[run]:
        for k, r in ca[run][g].items():
            d, b = k.split()
            L.append(f"| {run} | {g} | {d} | {b} | {r['n']} | {f(r['actor_p_outward'],2)} | {f(r['true_term_step_mean'],1)} | {f(r['true_frac_x_cause'],2)} | {f(r['pred_first_disc<0.5_step'],1)} | "
                     f"{f(r['pred_|theta|_at_first_term'],2)} / {f(r['pred_out_x_at_first_term'],2)} | {f(r['G_model_15step_noboot'],2)} / {f(r['G_true_15step'],2)} |")

L.append("\n### T4. Pole-up action sequences (collapsed phase): controllers run closed loop in the TRUE env for 30 steps from real states with |x|≥1.5, the same action sequence fed open loop to the model\n")
L.append("`balance-only`: right iff θ+0.5θ̇>0 (pole stays up, cart drifts off); `balance+center`: right iff [1,1.5,18,3]·s>0. "
         "For the cases that truly end by |x|>2.4 (n_x): model discount at the true terminal step, model P(alive) there, share with any disc<0.5 within −3..+1 steps of it, decoded outward x vs true. "
         "x outbias = sign(x0)·(pred−true) at h5/h10.\n")
L.append("| run | controller | |x| bin | n | true term ≤15 / ≤30 | true x-cause | model P(term ≤15) / ≤30 | n_x | true step | model disc at true term | model P(alive) there | model disc<0.5 near it | out-x pred / true | x outbias h5 / h10 |")
L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for run in ct:
    for k, r in ct[run]["collapsed"].items():
        c, b = k.rsplit(" ", 1)
        L.append(f"| {run} | {c} | {b} | {r['n']} | {f(r['true_term15'],2)} / {f(r['true_term30'],2)} | {f(r['true_x_cause_frac'],2)} | {f(r['pred_term15'],2)} / {f(r['pred_term30'],2)} | {r.get('xterm_n', 0)} | "
                 f"{f(r.get('xterm_true_step_mean'),1)} | {f(r.get('xterm_pred_disc_at_true_term'))} | {f(r.get('xterm_pred_alive_prob_at_true_term'),2)} | {f(r.get('xterm_pred_any_disc<0.5_within_3_of_true'),2)} | "
                 f"{f(r.get('xterm_pred_out_x_at_true_term'),2)} / {f(r.get('xterm_true_out_x_at_true_term'),2)} | {f(r['x_out_bias_h5'],2)} / {f(r['x_out_bias_h10'],2)} |")

L.append("\n### T5. Supplement: fresh world model re-trained offline on cp_v3norm's replay (same config, online-like schedule, WM only)\n")
L.append("| trained on steps | updates | θ-terminal: n, disc, frac<0.5 | x-terminal: n, disc, frac<0.5 | posterior x recon MAE by |x| (<0.5 … 2-2.45) |")
L.append("|---|---|---|---|---|")
for k, r in ow.items():
    th, xt = r["theta-terminal"], r["x-terminal"]
    mae = " / ".join(f(r[f"x_recon_mae_{b}"], 3) for b in ["0-0.5", "0.5-1", "1-1.5", "1.5-2", "2-2.45"])
    L.append(f"| ≤{k.split('_')[1]} | {r['updates']} | {th['n']}, {f(th['disc_at_terminal'])}, {f(th['frac<0.5'],2)} | {xt['n']}, {f(xt['disc_at_terminal'])}, {f(xt['frac<0.5'],2)} | {mae} |")
txt = "\n".join(L) + "\n"
txt = txt.replace("|x|", "abs(x)").replace("|θ|", "abs(θ)")
open(D + "tables.md", "w").write(txt)

# ---- plot
fig, ax = plt.subplots(1, 3, figsize=(16, 4.5))
for j, run in enumerate(ol):
    for g, ls in (("collapsed", "-"), ("good", "--")):
        z = np.load(D + f"openloop_{run}_{g}.npz"); pred, true, valid, x0 = z["pred"], z["true"], z["valid"], z["x0"]
        for (lo, hi), c in zip([(0, .5), (.5, 1), (1, 1.5), (1.5, 2), (2, 2.45)], plt.cm.viridis(np.linspace(0, 0.9, 5))):
            s = (x0 >= lo) & (x0 < hi)
            if s.sum() < 20: continue
            m = [np.abs(pred[s & valid[:, h], h, 0] - true[s & valid[:, h], h, 0]).mean() if (s & valid[:, h]).sum() >= 10 else np.nan for h in range(16)]
            ax[j].plot(range(16), m, ls, color=c, label=f"{g} |x| {lo}-{hi}")
    ax[j].set_title(f"{run}: open-loop |x| error (real actions)"); ax[j].set_xlabel("horizon"); ax[j].set_ylabel("MAE x"); ax[j].legend(fontsize=7)
labels, vals, cols = [], [], []
for run, rr in te.items():
    for k, r in rr.items():
        labels.append(f"{run.split('_')[0]}\n{k.replace(', ', chr(10))}"); vals.append(r["disc_at_terminal_mean"]); cols.append("C1" if k.startswith("x") else "C0")
ax[2].bar(range(len(vals)), vals, color=cols); ax[2].set_xticks(range(len(vals))); ax[2].set_xticklabels(labels, fontsize=6)
ax[2].axhline(0.5, color="k", lw=0.5); ax[2].set_title("posterior discount at terminal steps (target 0)"); ax[2].set_ylim(0, 1)
fig.tight_layout(); fig.savefig(D + "model_error.png", dpi=90)
print(open(D + "tables.md").read())
