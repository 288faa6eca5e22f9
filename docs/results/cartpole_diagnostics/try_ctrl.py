import numpy as np, gymnasium
def run(state, k, H=60):
    env = gymnasium.make("CartPole-v1").unwrapped; env.reset(seed=0); env.state = np.array(state, float); env.steps_beyond_terminated=None
    for h in range(1, H+1):
        s = env.state; a = int(np.dot(k, s) > 0)
        obs, r, term, _, _ = env.step(a)
        if term: return h, ("x" if abs(obs[0]) > 2.4 else "th")
    return None, f"x={obs[0]:.2f}"
rng = np.random.default_rng(0)
states = [np.array([rng.uniform(1.5, 2.3), rng.uniform(-0.2, 0.8), rng.uniform(-0.05, 0.1), rng.uniform(-0.3, 0.3)]) for _ in range(200)]
for k in ([0, 0, 1, 0.5], [0, 0, 10, 2], [0.05, 0.1, 1, 0.5], [0.1, 0.3, 1, 0.5], [0.2, 0.5, 2, 0.5], [1, 1.5, 18, 3], [0.5, 1, 10, 2]):
    res = [run(s, k) for s in states]
    print(k, "term15", np.mean([r[0] is not None and r[0] <= 15 for r in res]), "x-cause", np.mean([r[1] == "x" for r in res]), "th-cause", np.mean([r[1] == "th" for r in res]), "alive60", np.mean([r[0] is None for r in res]))
