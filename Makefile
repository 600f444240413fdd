# Two commands a fresh clone needs: `make demo` (the main job) and `make test` (the whole suite).
# Both create or reuse the project-local virtual environment .venv and install requirements.txt into
# it; the install reruns only when requirements.txt or pyproject.toml change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | sha1sum | cut -c1-12)
DEMO_OUT ?= out/demo

.PHONY: demo test venv clean mini-models chromium multitask-models paper-tables paper-tables-quick \
	portrait-variants distill-model multitask-ablations multitask-combinations multitask-wide

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

# Retrain the shipped mini models from scratch on CPU, on the v2 world (src/retouch/assets/mini/MODEL_CARD.md,
# docs/world_v2.md): the tokenizer; the autoencoder and CLIP side by side on one core each; the decoder
# (latent-noise robust; the encoder and so the latents are unchanged); the U-Net from pre-encoded shards
# under two gloo processes of one thread each (global batch 64): 10,000 steps of ε-MSE, then resumed to
# 13,000 with offset noise (the cosine schedule re-spreads on resume); the judge; export; the pixel
# probes; the terminal prior (seconds: a ridge fit); the portrait MCDM on rendered pairs; the evaluation. Every stage is resumable and reused.
MINI_WORK ?= out/train-mini-v2
MINI = $(VENV)/bin/retouch train mini --recipe v2 --work-dir $(MINI_WORK)
LAUNCH2 = ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 $(PY) -m accelerate.commands.launch --multi_gpu --num_processes 2 \
	--num_machines 1 --mixed_precision no --dynamo_backend no --main_process_ip 127.0.0.1 -m retouch.cli
PORTRAIT_PAIRS ?= out/pairs-renderer-v2
PORTRAIT_WORK ?= out/portrait/v2-oracle-g10
PORTRAIT_TRAIN = $(VENV)/bin/retouch train portrait --steps 1000 --batch 16 --learning-rate 2e-4 --input-gain 10
mini-models: $(STAMP)
	$(MINI) --stages tokenizer
	OMP_NUM_THREADS=1 $(MINI) --stages vae & OMP_NUM_THREADS=1 $(MINI) --stages clip & wait
	$(MINI) --stages decoder
	OMP_NUM_THREADS=1 $(MINI) --stages splice_decoder
	test -f $(MINI_WORK)/unet/final-10000/config.json || { \
	  $(LAUNCH2) train mini --recipe v2 --work-dir $(MINI_WORK) --stages unet --unet-batch 32 --unet-steps 10000 && \
	  mv $(MINI_WORK)/unet/final $(MINI_WORK)/unet/final-10000; }
	$(LAUNCH2) train mini --recipe v2 --work-dir $(MINI_WORK) --stages unet --unet-batch 32 --unet-steps 13000 \
	  --unet-offset-noise 0.1
	OMP_NUM_THREADS=2 $(MINI) --stages judge,export
	$(VENV)/bin/retouch train probes --profile v2
	OMP_NUM_THREADS=2 $(VENV)/bin/retouch train terminal-prior
	test -d $(PORTRAIT_PAIRS) || $(PY) benchmarks/portrait_oracle_pairs.py $(PORTRAIT_PAIRS) 1500
	OMP_NUM_THREADS=2 $(PORTRAIT_TRAIN) --data $(PORTRAIT_PAIRS) --output-dir $(PORTRAIT_WORK)
	$(VENV)/bin/retouch train ship portrait $(PORTRAIT_WORK)/final
	$(VENV)/bin/retouch eval mini

# The portrait table's trained variants (src/retouch/bench/portrait.py: VARIANTS; not shipped, the weights budget
# holds one MCDM), each the shipped MCDM's recipe with one thing changed: Table 1's ablations w/o Spt, w/o Iemb and
# w/o Prt on the same 3,000 rendered pairs; the data claim's MCDM on pairs Eq. 2 makes from the shipped base model
# (PAIRS_GENERATED per direction, filtered: ~9-16 % kept), and one on as many rendered pairs as that kept.
# `retouch bench paper` then adds their rows and claims. About 1 h on one thread; every step is reused.
PAIRS_GENERATED ?= 1600
GENERATED_PAIRS = out/pairs-generated-v2
portrait-variants: $(STAMP)
	test -d $(PORTRAIT_PAIRS) || $(PY) benchmarks/portrait_oracle_pairs.py $(PORTRAIT_PAIRS) 1500
	for variant in "no-spatial --no-spatial" "no-iemb --no-image-embedding" "scratch --scratch"; do \
	  set -- $$variant; test -d out/portrait/v2-$$1/final || \
	  OMP_NUM_THREADS=1 $(PORTRAIT_TRAIN) --data $(PORTRAIT_PAIRS) $$2 --output-dir out/portrait/v2-$$1 || exit 1; done
	for direction in hat striped; do test -d $(GENERATED_PAIRS)-$$direction || \
	  OMP_NUM_THREADS=1 $(VENV)/bin/retouch data pairs -o $(GENERATED_PAIRS)-$$direction --direction $$direction \
	    --count $(PAIRS_GENERATED) --seed 1 || exit 1; done
	test -d out/portrait/v2-generated/final || OMP_NUM_THREADS=1 $(PORTRAIT_TRAIN) --data $(GENERATED_PAIRS)-hat \
	  --data $(GENERATED_PAIRS)-striped --output-dir out/portrait/v2-generated
	test -d out/pairs-renderer-v2-equal || $(PY) benchmarks/portrait_oracle_pairs.py out/pairs-renderer-v2-equal \
	  $$($(PY) -c "import json; print(sum(json.load(open(f'$(GENERATED_PAIRS)-{d}/dataset.json'))['kept'] \
	    for d in ('hat', 'striped')) // 2)")
	test -d out/portrait/v2-rendered-equal/final || OMP_NUM_THREADS=1 $(PORTRAIT_TRAIN) \
	  --data out/pairs-renderer-v2-equal --output-dir out/portrait/v2-rendered-equal

clean:
	rm -rf $(VENV) out .pytest_cache

# The multitask paper's models on the compositing benchmark (docs/multitask.md), at the CPU recipe that shipped
# (pixel space, residual x̂₀, 32² windows, input gain 10, no identity examples, the hole as an input channel; in
# the five-task runs inpainting and sharpening drawn twice as often as each other task; not the paper's, which
# stays the trainer's default): ours (C through f_θ and on the input) and Palette++ (C on the input only) at
# MT_STEPS × 16 samples, side by side on one thread each; then no binary labels at the same budget beside pix2pix
# at about the same CPU time (a GAN step costs ~6× a diffusion step here) followed by ours-single, one model per
# task at MT_STEPS / 5 steps; then the tables. About 2 h on 2 cores. The shipped model comes from `make multitask-wide`.
MT_DATA ?= out/compositing
MT_WORK ?= out/train-multitask
MT_STEPS ?= 6000
MT_PIX2PIX_STEPS ?= 900
# The benchmark (N = 800 grain), with 4 multi-task examples per training crop for ours-combined; the single-task
# runs draw exactly what they draw from a build without them (~35 min on 2 cores).
MT_DATA_BUILD = test -d $(MT_DATA) || $(VENV)/bin/retouch data compositing -o $(MT_DATA) --world-scenes 300 \
	--dead-leaves 300 --workers 2 --train-combinations 4
MT_TRAIN = OMP_NUM_THREADS=1 $(VENV)/bin/retouch train multitask --data $(MT_DATA) --batch 16
MT_RECIPE = --space pixel --prediction residual --crop 32 --input-gain 10 --learning-rate 3e-4 --no-identity-examples \
	--hole-channel
MT_MIX = --task-weights inpaint=2,sharpen=2
MT_OURS = $(MT_RECIPE) $(MT_MIX) --conditioning cross-attention+concat
multitask-models: $(STAMP)
	$(MT_DATA_BUILD)
	$(MT_TRAIN) $(MT_OURS) --steps $(MT_STEPS) --output-dir $(MT_WORK)/ours & \
	$(MT_TRAIN) $(MT_RECIPE) $(MT_MIX) --conditioning concat --steps $(MT_STEPS) --output-dir $(MT_WORK)/palette & \
	wait
	$(MT_TRAIN) $(MT_OURS) --no-labels --steps $(MT_STEPS) \
		--output-dir $(MT_WORK)/no-labels & \
	( $(MT_TRAIN) --architecture pix2pix --learning-rate 2e-4 --steps $(MT_PIX2PIX_STEPS) --output-dir $(MT_WORK)/pix2pix && \
	  for task in blur grain colour inpaint sharpen; do \
	    $(MT_TRAIN) $(MT_RECIPE) --conditioning cross-attention+concat --steps $$(( $(MT_STEPS) / 5 )) \
	      --output-dir $(MT_WORK)/single-$$task --tasks $$task || exit 1; \
	  done ) & \
	wait
	$(PY) benchmarks/multitask_tables.py --data $(MT_DATA) --work $(MT_WORK)

# Table 5 (the N-pair loss of Eq. 3 on the bottleneck, config A, or on the labels' space, config B) and the f_θ depth
# ablation (0, 1, 4 linear layers; ours has 2) on the N = 800 benchmark, with ours retrained beside them: six runs of
# MT_ABLATION_STEPS × 16 on ours' recipe with one thing changed, two chains side by side on one thread each (the
# steps are two thirds of the shipped budget so the six fit one session: ~26 min each, ~80 min in all). Resumable.
MT_ABLATION_WORK ?= out/train-multitask-ablations
MT_ABLATION_STEPS ?= 4000
MT_ABLATION_CHAIN = set -- $$run; name=$$1; shift; test -d $(MT_ABLATION_WORK)/$$name/final || \
	$(MT_TRAIN) $(MT_OURS) "$$@" --steps $(MT_ABLATION_STEPS) --output-dir $(MT_ABLATION_WORK)/$$name || exit 1
multitask-ablations: $(STAMP)
	$(MT_DATA_BUILD)
	( for run in "ours" "n-pair-b --n-pair labels" "depth-1 --mapping-depth 1"; do $(MT_ABLATION_CHAIN); done ) & \
	( for run in "n-pair-a --n-pair bottleneck" "depth-0 --mapping-depth 0" "depth-4 --mapping-depth 4"; do \
	  $(MT_ABLATION_CHAIN); done ) & \
	wait
	$(PY) benchmarks/multitask_tables.py --data $(MT_DATA) --work $(MT_ABLATION_WORK) --out docs/multitask_ablations.md \
		--splits test

# Table 3's other comparison, at the ablations' budget and into their tables: the chain of single-task models
# (one per task at MT_ABLATION_STEPS / 5, ours' recipe without the task mix), and ours-combined: ours' recipe with a
# quarter of the draws multi-task examples of 2-3 tasks (--combination-share; not the paper, which trains on single
# tasks). Two chains on one thread each; the tables keep the ablations' cached rows (--keep-cached).
MT_COMBINATION_SHARE ?= 0.25
multitask-combinations: $(STAMP)
	$(MT_DATA_BUILD)
	test -d $(MT_ABLATION_WORK)/ours-combined/final || $(MT_TRAIN) $(MT_OURS) --combination-share $(MT_COMBINATION_SHARE) \
		--steps $(MT_ABLATION_STEPS) --output-dir $(MT_ABLATION_WORK)/ours-combined & \
	( for task in blur grain colour sharpen inpaint; do test -d $(MT_ABLATION_WORK)/single-$$task/final || \
	    $(MT_TRAIN) $(MT_RECIPE) --conditioning cross-attention+concat --steps $$(( $(MT_ABLATION_STEPS) / 5 )) \
	      --output-dir $(MT_ABLATION_WORK)/single-$$task --tasks $$task || exit 1; \
	  done ) & \
	wait
	$(PY) benchmarks/multitask_tables.py --data $(MT_DATA) --work $(MT_ABLATION_WORK) --out docs/multitask_ablations.md \
		--splits test --keep-cached

# The shipped model (session 15): ours' recipe with twice the channels at the U-Net's full-resolution level
# (--pixel-channels; the chain's five models hold five times the weights), half the draws multi-task examples, and the
# texture term on grain and sharpening examples only, at MT_STEPS; beside it the same without the texture term. Then
# the chain of single-task models on the shipped recipe at the same total steps (5 × MT_STEPS / 5, into
# MT_WIDE_WORK, whose tables compare it with the shipped model), the tables, the control curves and the shipped copy.
# Two runs on one thread each (~56 min), then the chain (~50 min).
MT_WIDE = $(MT_RECIPE) --conditioning cross-attention+concat --pixel-channels 32,32,64,128
MT_TEXTURE = --texture-weight 5 --texture-tasks grain,sharpen
MT_WIDE_COMBINED = $(MT_WIDE) $(MT_MIX) --combination-share 0.5 --steps $(MT_STEPS)
MT_WIDE_WORK ?= out/train-multitask-wide
multitask-wide: $(STAMP)
	$(MT_DATA_BUILD)
	test -d $(MT_ABLATION_WORK)/ours-wide-combined/final || $(MT_TRAIN) $(MT_WIDE_COMBINED) \
		--output-dir $(MT_ABLATION_WORK)/ours-wide-combined & \
	test -d $(MT_ABLATION_WORK)/ours-wide-combined-texture/final || $(MT_TRAIN) $(MT_WIDE_COMBINED) $(MT_TEXTURE) \
		--output-dir $(MT_ABLATION_WORK)/ours-wide-combined-texture & \
	wait
	for task in blur grain colour sharpen inpaint; do test -d $(MT_WIDE_WORK)/single-$$task/final || \
	  $(MT_TRAIN) $(MT_WIDE) $(MT_TEXTURE) --steps $$(( $(MT_STEPS) / 5 )) --output-dir $(MT_WIDE_WORK)/single-$$task --tasks $$task \
	  || exit 1; done
	ln -sfn $(abspath $(MT_ABLATION_WORK))/ours-wide-combined-texture $(MT_WIDE_WORK)/ours-wide-combined-texture
	$(PY) benchmarks/multitask_tables.py --data $(MT_DATA) --work $(MT_ABLATION_WORK) --out docs/multitask_ablations.md \
		--splits test,photos --keep-cached
	$(PY) benchmarks/multitask_tables.py --data $(MT_DATA) --work $(MT_WIDE_WORK) --out docs/multitask_wide_chain.md \
		--splits test
	$(PY) benchmarks/multitask_control_curves.py --model $(MT_ABLATION_WORK)/ours-wide-combined-texture/final \
		--data $(MT_DATA) --split test --limit 12 --json docs/multitask_control_curves.json \
		--plot docs/multitask_control_curves.png
	$(VENV)/bin/retouch train ship multitask $(MT_ABLATION_WORK)/ours-wide-combined-texture/final

# pix2pix-zero distilled into a one-pass translator (§4.5, App. A) for the red->blue edit, at the settings of
# benchmarks/distill_mini.py (`retouch train distill`'s defaults, DistillConfig's: 200 pix2pix-zero pairs of 25
# steps on training scenes, App. A's filter, 600 steps at batch 32), in the folder where `retouch bench paper`
# finds it (out/ + retouch.train.distill.trained_folder). Not shipped. Resumable: the pairs are cached, training
# resumes from its checkpoints. 63 min on one CPU thread beside another job (pairs 2.6 s each, steps ~5.4 s).
distill-model: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/retouch train distill --edit 'red->blue' --output-dir out/distill/red-to-blue

# Every covered paper table on the shipped models, with 95 % intervals over 100 held-out scenes per cell,
# and docs/paper_claims.md (one verdict per claim). Rows are cached under out/paper-tables and reused
# unless their settings or the models' files change, so an interrupted run resumes. Hours on 2 CPU cores.
paper-tables: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/retouch bench paper

# The same, every table tiny, under out/paper-quick (a smoke test; about a minute).
paper-tables-quick: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/retouch bench paper --quick
