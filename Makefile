# Two commands a fresh clone needs: `make demo` (the main job) and `make test` (the whole suite).
# Both create or reuse the project-local virtual environment .venv and install requirements.txt into
# it; the install reruns only when requirements.txt or pyproject.toml change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | sha1sum | cut -c1-12)
DEMO_OUT ?= out/demo

.PHONY: demo test venv clean mini-models mini-models-v2 chromium multitask-models

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/retouch demo --output $(DEMO_OUT)

# The web app's browser tests drive Debian's Chromium through Playwright (never `playwright install`,
# which downloads a browser); installed here when missing, as CI runs `make test` on a fresh machine.
test: $(STAMP) chromium
	HF_HUB_OFFLINE=1 $(PY) -m pytest

chromium:
	@test -x /usr/bin/chromium || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "make: could not install chromium (needs root and Debian's registry); browser tests will skip"

# Retrain the shipped mini models from scratch on CPU (see src/retouch/assets/mini/MODEL_CARD.md):
# autoencoder and CLIP side by side on one core each, the autoencoder's local decoder, then the U-Net in
# three resumed phases, then the judge (a CLIP copy sharpened with attribute hard negatives), export,
# and evaluation.
MINI_WORK ?= out/train-mini
PLAIN_MSE = --unet-object-weight 0 --unet-min-snr-gamma 0
mini-models: $(STAMP)
	$(VENV)/bin/retouch train mini --stages tokenizer --work-dir $(MINI_WORK)
	OMP_NUM_THREADS=1 $(VENV)/bin/retouch train mini --stages vae --vae-steps 1000 --vae-batch 16 --work-dir $(MINI_WORK) & \
	OMP_NUM_THREADS=1 $(VENV)/bin/retouch train mini --stages clip --clip-steps 1800 --clip-batch 64 --work-dir $(MINI_WORK) & \
	wait
	# Local decoder (encoder frozen, so the U-Net's latent space is unchanged): 600 steps, then
	# resumed to 2000 (the resume re-spreads the cosine schedule), as the shipped decoder was made.
	$(VENV)/bin/retouch train mini --stages decoder --decoder-steps 600 --work-dir $(MINI_WORK)
	mv $(MINI_WORK)/decoder/final $(MINI_WORK)/decoder/final-600
	$(VENV)/bin/retouch train mini --stages decoder --decoder-steps 2000 --work-dir $(MINI_WORK)
	# U-Net: 2500 then 3600 steps of plain ε-MSE (each resume re-spreads the cosine schedule), then
	# resumed to 7000 steps with the object-weighted, Min-SNR-5 loss (the config's defaults)
	# (the shipped run set --unet-steps 7600 and was re-spread to 7000 at its step-4250 checkpoint)
	$(VENV)/bin/retouch train mini --stages unet --unet-steps 2500 --unet-batch 32 $(PLAIN_MSE) --work-dir $(MINI_WORK)
	mv $(MINI_WORK)/unet/final $(MINI_WORK)/unet/final-2500
	$(VENV)/bin/retouch train mini --stages unet --unet-steps 3600 --unet-batch 32 $(PLAIN_MSE) --work-dir $(MINI_WORK)
	mv $(MINI_WORK)/unet/final $(MINI_WORK)/unet/final-3600
	$(VENV)/bin/retouch train mini --stages unet --unet-steps 7000 --unet-batch 32 --work-dir $(MINI_WORK)
	$(VENV)/bin/retouch train mini --stages judge,export --judge-steps 1000 --judge-batch 64 --work-dir $(MINI_WORK)
	$(VENV)/bin/retouch eval mini

# The v2 world's models (issue 19, docs/world_v2.md; in progress: not yet exported or shipped), as the runs
# of the first session were made: tokenizer, then autoencoder and CLIP side by side on one core each, then
# the U-Net from pre-encoded shards under two gloo processes of one thread each (global batch 64).
MINI_V2_WORK ?= out/train-mini-v2
MINI_V2 = $(VENV)/bin/retouch train mini --recipe v2 --work-dir $(MINI_V2_WORK)
LAUNCH2 = ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 $(PY) -m accelerate.commands.launch --multi_gpu --num_processes 2 \
	--num_machines 1 --mixed_precision no --dynamo_backend no --main_process_ip 127.0.0.1 -m retouch.cli
mini-models-v2: $(STAMP)
	$(MINI_V2) --stages tokenizer
	OMP_NUM_THREADS=1 $(MINI_V2) --stages vae & OMP_NUM_THREADS=1 $(MINI_V2) --stages clip & wait
	$(LAUNCH2) train mini --recipe v2 --work-dir $(MINI_V2_WORK) --stages unet --unet-batch 32

clean:
	rm -rf $(VENV) out .pytest_cache

# The multitask paper's models on the compositing benchmark (docs/multitask.md): the dataset, then ours,
# Palette++, no binary labels, pix2pix and ours-single (one model per task, each a third of ours' steps,
# so it sees its own task as often as ours does), two runs at a time on one thread each; then the
# tables, the control figure and the shipped copy of ours.
MT_DATA ?= out/compositing
MT_WORK ?= out/train-multitask
MT_STEPS ?= 900
MT_TRAIN = OMP_NUM_THREADS=1 $(VENV)/bin/retouch train multitask --data $(MT_DATA) --batch 16 --learning-rate 2e-4
multitask-models: $(STAMP)
	test -d $(MT_DATA) || $(VENV)/bin/retouch data compositing -o $(MT_DATA) --world-scenes 300 --dead-leaves 300 \
		--workers 2
	$(MT_TRAIN) --steps $(MT_STEPS) --output-dir $(MT_WORK)/ours & \
	$(MT_TRAIN) --steps $(MT_STEPS) --output-dir $(MT_WORK)/palette --conditioning concat & \
	wait
	$(MT_TRAIN) --steps $(MT_STEPS) --output-dir $(MT_WORK)/no-labels --no-labels & \
	( $(MT_TRAIN) --steps $(MT_STEPS) --output-dir $(MT_WORK)/pix2pix --architecture pix2pix && \
	  for task in blur grain colour inpaint sharpen; do \
	    $(MT_TRAIN) --steps $$(( $(MT_STEPS) / 3 )) --output-dir $(MT_WORK)/single-$$task --tasks $$task || exit 1; \
	  done ) & \
	wait
	$(PY) benchmarks/multitask_tables.py --data $(MT_DATA) --work $(MT_WORK)
	$(PY) benchmarks/multitask_control.py --model $(MT_WORK)/ours/final --data $(MT_DATA) --split photos
	$(VENV)/bin/retouch train ship multitask $(MT_WORK)/ours/final
