# rims-rl: every target installs what it needs into .venv first.
# Override the torch build for your platform, e.g. make install TORCH_SPEC="torch==2.13.0" or a CUDA wheel.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow test-ray test-zoo lint bench bench-train bench-compare copying experiment-distractors imitation clean

install: $(STAMP)

# torch goes in first and on its own, so that the package's plain `torch` requirement is already
# met and pip never pulls a multi-GB CUDA build onto a CPU machine. The package installs editable with
# -qq (errors only): setuptools prints a ten-line notice for every editable install of a package whose
# folders are mapped (agents/ and envs/ install as rims_rl.agents and rims_rl.envs), with nothing to act
# on. The last step compiles the RIMs time loop for CPUs (rims_rl/native.py); without a compiler it says
# so and the Python loop is used.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -qq -e ".[dev]"
	$(BIN)/python -c "from rims_rl import native; native.build()"
	touch $@

# The main job on a small default: RIMs and the LSTM baseline side by side on CartPole without velocities
# (a memory task), 100k steps each, both at once (about 5 minutes on a 2-core CPU); then both evaluated,
# their learning curves in one plot (runs/demo/comparison/curves.png) and the RIMs units' activations over
# an episode (runs/demo/RimsRL-CartPoleNoVel-v1/rims/seed0/visualize/).
demo: install
	rm -rf runs/demo
	$(BIN)/rims-rl sweep --config sweeps/demo.yaml --out runs/demo
	$(BIN)/rims-rl evaluate runs/demo/RimsRL-CartPoleNoVel-v1/rims/seed0 --episodes 10
	$(BIN)/rims-rl evaluate runs/demo/RimsRL-CartPoleNoVel-v1/lstm/seed0 --episodes 10
	$(BIN)/rims-rl compare runs/demo --out runs/demo/comparison
	$(BIN)/rims-rl visualize runs/demo/RimsRL-CartPoleNoVel-v1/rims/seed0
	@echo "Next, Atari (hours on a CPU; a GPU is used when there is one):"
	@echo "  $(BIN)/rims-rl train --config atari/ppo_rims.yaml --env Pong"
	@echo "  $(BIN)/rims-rl train --config atari/ppo_rims.yaml --env Pong --policy lstm"
	@echo "  $(BIN)/rims-rl compare runs/Pong"

test: install
	$(BIN)/python -m pytest -q

# Learning checks that take minutes (default policies on CartPole without velocities).
test-slow: install
	$(BIN)/python -m pytest -q -m slow

# The Ray backend of `rims-rl sweep` on a local Ray instance: installs the optional ray extra into .venv
# (plain `make test` skips these tests when ray is missing).
test-ray: install
	$(BIN)/python -m pip install --quiet -e ".[ray]"
	$(BIN)/python -m pytest -q -m ray

# rl-zoo3 training, replaying and tuning a RIMs policy from configs/zoo/ppo_lstm.yml: installs the optional
# zoo extra into .venv (it downgrades pillow through moviepy; plain `make test` skips these tests without it).
test-zoo: install
	$(BIN)/python -m pip install --quiet -e ".[zoo]"
	$(BIN)/python -m pytest -q -m zoo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Speed of the RIMs core against nn.LSTM, measured side by side and printed as ratios.
bench: install
	$(BIN)/python benchmarks/bench_core.py

# End-to-end PPO throughput on Pong: feed-forward, stock CnnLstmPolicy, our LSTM and RIMs policies (the
# packaged config's), and both reading input sets; then our policies on the MiniGrid task.
bench-train: install
	$(BIN)/python benchmarks/bench_train.py --sets
	$(BIN)/python benchmarks/bench_train.py --sets --config minigrid/pickup.yaml

# Both benchmarks, this checkout against another version side by side (alternating runs, medians, noise):
# make bench-compare BASE=<git revision> (default: the previous commit). The other version is checked out
# into build/base with a .venv of its own.
BASE ?= HEAD~1
bench-compare: install
	rm -rf build/base && git worktree prune && git worktree add --detach build/base $(BASE)
	$(MAKE) -C build/base install TORCH_SPEC="$(TORCH_SPEC)" PYTHON="$(PYTHON)"
	$(BIN)/python benchmarks/compare_versions.py --baseline build/base --bench core
	$(BIN)/python benchmarks/compare_versions.py --baseline build/base --bench train -- --iterations 3

# The paper's copying experiments under one protocol (configs/copying.yaml, 10,000 updates per model):
# Table 1 (RIMs 6x100 k_A 4 against an LSTM of 600), then Table 5's five RIMs ablations, then two short
# RIMs runs with the LSTM's forget bias, in runs/copying/table1, table5 and forget-bias. Hours on a 2-core
# CPU (a RIMs update takes about 0.9 s, an LSTM one 0.3 s); every run checkpoints, and the same command
# resumes what is unfinished.
copying: install
	$(BIN)/rims-rl sweep --config sweeps/copying_table1.yaml
	$(BIN)/rims-rl sweep --config sweeps/copying_table5.yaml
	$(BIN)/rims-rl sweep --config sweeps/copying_forget_bias.yaml

# RIMs (reading an input set, and one row) vs LSTM on MiniGrid pickup with known, novel and crowded
# distractors (paper Fig. 5): 3 seeds each, two runs at a time (configs/sweeps/pickup_sets.yaml); results
# table and bar plot in runs/experiments/pickup-sets/. Finished runs are reused, unfinished ones resumed.
experiment-distractors: install
	$(BIN)/rims-rl experiment-distractors

# HalfCheetah imitation from pixels under joint noise (paper Table 6): expert, dataset, BC, evaluation.
imitation: install
	$(BIN)/rims-rl imitation run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
