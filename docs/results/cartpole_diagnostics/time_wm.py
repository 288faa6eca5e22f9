import sys, time; sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from common import *
agent, cfg, _ = load_agent(RUNS["cp_v3norm"])
B = {"vector": np.random.randn(32, 16, 4).astype(np.float32), "action": np.eye(2, dtype=np.float32)[np.random.randint(0, 2, (32, 16))],
     "reward": np.ones((32, 16), np.float32), "is_first": np.zeros((32, 16), bool), "is_last": np.zeros((32, 16), bool), "is_terminal": np.zeros((32, 16), bool)}
B["is_first"][0] = True
data = agent.wm.preprocess(B)
t = time.time()
for _ in range(20): agent.train_model(data)
print("wm update s", (time.time() - t) / 20)
