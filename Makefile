# rims-rl: every target installs what it needs into .venv first.
# Override the torch build for your platform, e.g. make install TORCH_SPEC="torch==2.13.0" or a CUDA wheel.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-ray lint bench bench-train copying experiment-distractors imitation clean

install: $(STAMP)

# torch goes in first and on its own, so that the package's plain `torch` requirement is already
# met and pip never pulls a multi-GB CUDA build onto a CPU machine. The last step compiles the RIMs
# time loop for CPUs (rims_rl/native.py); without a compiler it says so and the Python loop is used.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -c "from rims_rl import native; native.build()"
	touch $@

# The main job on a small default: RIMs-PPO on Pong for a couple of minutes on a CPU, then a
# full-game evaluation and the learning-curve plot (runs/demo/comparison/curves.png).
DEMO_STEPS ?= 16384
demo: install
	rm -rf runs/demo
	$(BIN)/rims-rl train --config atari/ppo_rims.yaml --env Pong --total-steps $(DEMO_STEPS) --out runs/demo \
		--set run.eval_every=8192 --set run.eval_episodes=2 --set run.checkpoint_every=8192
	$(BIN)/rims-rl evaluate runs/demo/Pong/ppo-rims/seed0 --episodes 2
	$(BIN)/rims-rl compare runs/demo --out runs/demo/comparison

test: install
	$(BIN)/python -m pytest -q

# The Ray backend of `rims-rl sweep` on a local Ray instance: installs the optional ray extra into .venv
# (plain `make test` skips these tests when ray is missing).
test-ray: install
	$(BIN)/python -m pip install --quiet -e ".[ray]"
	$(BIN)/python -m pytest -q -m ray

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Speed of the RIMs core against nn.LSTM, measured side by side and printed as ratios.
bench: install
	$(BIN)/python benchmarks/bench_core.py

# End-to-end PPO throughput on Pong: feed-forward, stock CnnLstmPolicy, our LSTM and RIMs policies.
bench-train: install
	$(BIN)/python benchmarks/bench_train.py

# The full copying experiment (paper Table 1); about half an hour on a 2-core CPU.
copying: install
	$(BIN)/rims-rl copying --out runs/copying

# RIMs vs LSTM on MiniGrid pickup with known and novel distractors (paper Fig. 5): 3 seeds each,
# results table and bar plot in runs/experiments/distractors/. Finished runs are reused.
experiment-distractors: install
	$(BIN)/rims-rl experiment-distractors --out runs/experiments/distractors

# HalfCheetah imitation from pixels under joint noise (paper Table 6): expert, dataset, BC, evaluation.
imitation: install
	$(BIN)/rims-rl imitation run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
