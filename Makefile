# The front door. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
DALI_CUDA ?= 130
STAMP := $(VENV)/.installed-$(DALI_CUDA)

# DATASET names the run (runs/<model>_<dataset>) and picks its recipe: given, else read from a given DATA's
# prep.json (prep/dataset_name.py: the prep preset, else the folder's name); `make train` refuses without either.
ifeq ($(origin DATASET),undefined)
  ifneq ($(filter command line environment,$(origin DATA)),)
    DATASET := $(shell $(PY) prep/dataset_name.py '$(DATA)')
    ifneq ($(.SHELLSTATUS),0)
      $(error $(DATASET))
    endif
  else ifneq ($(filter train,$(MAKECMDGOALS)),)
    $(error make train needs DATA=PREPPED_FOLDER (its prep.json names the dataset) or DATASET=NAME)
  else
    DATASET := synthetic
  endif
endif
SRC ?=
OUT ?= data/$(DATASET)
DATA ?= $(OUT)
MODEL ?= i3d_resnet50
GPUS ?= 1
NODES ?= 1
NODE_RANK ?= 0
MASTER ?= 127.0.0.1:29500
# empty: the protocol's (a zoo row's views, else 1 x 1)
CLIPS ?=
CROPS ?=
# An alias (MODEL=i3d_resnet) finds the recipe and run folder of the model it stands for; only the registry
# knows the aliases. Looked up once, and only by the targets that use it.
MODEL_NAME = $(eval MODEL_NAME := $(shell $(PYTHON) -c 'import sys; from models.registry import resolve_name; \
  print(resolve_name(sys.argv[1]))' $(MODEL) 2>/dev/null || echo $(MODEL)))$(MODEL_NAME)
RUN ?= runs/$(MODEL_NAME)_$(DATASET)
CKPT ?= $(RUN)/best.pt
CONFIG ?= $(wildcard configs/$(MODEL_NAME)_$(DATASET).yaml)
ARGS ?=
PYTEST_ARGS ?=

.PHONY: help install bench-requirements test test-quick demo prep prep-merge train pretrain-image eval predict bench-prep bench-data bench-stages bench-models bench-images bench-memory bench-remote bench-startup gpu-check clean

help:
	@echo "make install                       create .venv with the pinned versions of requirements.txt"
	@echo "make demo                          synthetic dataset -> prep -> train -> eval, on whatever device is present"
	@echo "make test | test-quick             the whole suite on the CPU | without the slow end-to-end tests"
	@echo "make prep DATASET=ssv2|kinetics400|synthetic SRC=... OUT=...   (OUT=s3://BUCKET/PREFIX: prepped to object storage)"
	@echo "make prep ... PART=I/N  then  make prep-merge OUT=...   one part per machine, joined when all are done"
	@echo "make train MODEL=i3d_resnet50 DATA=... [GPUS=8 NODES=1 NODE_RANK=0 MASTER=host:port ARGS=...]"
	@echo "make pretrain-image MODEL=ircsn_50 DATA=IMAGENET_DIR [GPUS=8 ARGS=...]   image pre-training (STS recipe)"
	@echo "make eval CKPT=... [DATA=...] CLIPS=3 CROPS=3 [ARGS=\"--protocol ibm|sifar|mmaction|ila|vidkit|ZOO_KEY\"]"
	@echo "make predict VIDEO='a.mp4 dir/ list.txt' CKPT=... [CLIPS=3 CROPS=3]   top classes of video files, no prep step"
	@echo "make bench-prep | bench-data | bench-stages | bench-models | bench-images | bench-memory | bench-startup"
	@echo "make gpu-check [STEP=\"tests meter data meter_vit images nvdec\"] [ARGS=\"--time-limit 420\"]   on a GPU"

install: $(STAMP)

# torch's own wheel index for torch and torchvision, e.g. https://download.pytorch.org/whl/cpu: its CPU builds bring
# no CUDA libraries (the CUDA builds' nvidia-* packages are most of the 6.7 GB). Empty: pip's configured index.
TORCH_INDEX ?=
CPU_TORCH_INDEX := https://download.pytorch.org/whl/cpu
PIP_INSTALL = PYTHONUNBUFFERED=1 $(BIN)/pip install --disable-pip-version-check --progress-bar off
# what pip does, one line per package as it is collected, then the (long) unpacking; errors as they come
PIP_SHOWN = 2> >(grep -v "^WARNING: Location" >&2) | { grep --line-buffered -E "^(Collecting|Installing collected)" \
	  | sed -u -E 's/ \(from .*//; s/^Installing collected packages:.*/  unpacking and installing them (most of the time).../' || true; }

$(STAMP): requirements.txt pyproject.toml
	@echo "make install: the versions of requirements.txt into $(VENV): with the CUDA builds of torch about 6.7 GB," \
	  "3-4 min (README)"
	@test -n "$(TORCH_INDEX)" || test -e /proc/driver/nvidia/version || echo "make install: no NVIDIA driver here:" \
	  "TORCH_INDEX=$(CPU_TORCH_INDEX) make install installs torch's CPU builds instead, without CUDA libraries"
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	@date +%s > $(VENV)/.install-started
	sed 's/^nvidia-dali-cuda130==/nvidia-dali-cuda$(DALI_CUDA)==/' requirements.txt > $(VENV)/requirements.lock
	$(if $(TORCH_INDEX),$(PIP_INSTALL) --index-url $(TORCH_INDEX) $$(grep -oE '^torch(vision)?==[^ ]+' \
	  $(VENV)/requirements.lock) $(PIP_SHOWN))
	$(PIP_INSTALL) -r $(VENV)/requirements.lock $(PIP_SHOWN)
	$(BIN)/pip check >/dev/null || { $(BIN)/pip check; exit 1; }
	@# the project itself, editable (quietly: setuptools warns at length about editable installs)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
	  || $(BIN)/pip install --no-deps --no-build-isolation -e .
	$(PYTHON) -c "import torch, nvidia.dali, timm, lmdb, pyarrow, av, PIL, tqdm, yaml"
	@echo "make install: done in $$(( $$(date +%s) - $$(cat $(VENV)/.install-started) )) s, $$(du -sh $(VENV) | cut -f1)" \
	  "in $(VENV)"
	rm -f $(VENV)/.installed-* $(VENV)/.install-started && touch $@

# The benchmark-only baselines (requirements-bench.txt): `make test` runs their fairness tests, `make bench-data` times
# them. torchcodec loads the system's FFmpeg shared libraries, which no pip package ships: Debian's ffmpeg where
# apt-get runs as root (CI); elsewhere torchcodec's tests skip saying so, and fail under CI=true.
BENCH_STAMP := $(VENV)/.bench-installed
FFMPEG_LIBS = PATH="$$PATH:/sbin:/usr/sbin" ldconfig -p 2>/dev/null | grep -q 'libavcodec\.so\.'

bench-requirements: $(BENCH_STAMP)
	@$(FFMPEG_LIBS) || if test "$$(id -u)" = 0 && command -v apt-get >/dev/null; then \
	  echo "installing Debian's ffmpeg: torchcodec loads its shared libraries"; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null; \
	else echo "make: no FFmpeg shared libraries, and no root apt-get to install them: torchcodec's baseline and its" \
	  "tests are skipped (they fail under CI=true); install the system's FFmpeg to run them"; fi

$(BENCH_STAMP): requirements-bench.txt $(STAMP)
	$(PIP_INSTALL) -q -r requirements-bench.txt 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(BIN)/pip check >/dev/null || { $(BIN)/pip check; exit 1; }
	touch $@

test: install bench-requirements
	$(PYTHON) -m pytest -q $(PYTEST_ARGS) tests

test-quick: install bench-requirements
	$(PYTHON) -m pytest -q -m "not slow" $(PYTEST_ARGS) tests

demo: install
	$(PYTHON) -m train.demo $(ARGS)

prep: install
	$(PYTHON) -m prep $(DATASET) $(if $(SRC),--root $(SRC)) --out $(OUT) $(if $(PART),--part $(PART)) $(ARGS)

# after every PART=I/N job of a prep (each on its own machine, OUT a folder or s3://BUCKET/PREFIX)
prep-merge: install
	$(PYTHON) -m prep merge $(OUT)

TORCHRUN = $(BIN)/torchrun --nnodes $(NODES) --node-rank $(NODE_RANK) --nproc-per-node $(GPUS) \
	  $(if $(filter 1,$(NODES)),--standalone,--rdzv-backend c10d --rdzv-endpoint $(MASTER))
# One process runs without torchrun, which would follow its one-line error with a ChildFailedError dump.
LAUNCH = $(if $(and $(filter 1,$(GPUS)),$(filter 1,$(NODES))),$(PYTHON),$(TORCHRUN))
IMAGE_CONFIG ?= $(firstword $(wildcard configs/$(MODEL_NAME)_imagenet.yaml) configs/imagenet_sts.yaml)

train: install
	$(LAUNCH) -m train $(if $(CONFIG),--config $(CONFIG)) --model $(MODEL) --dataset $(DATASET) --data $(DATA) $(ARGS)

pretrain-image: install
	@test "$(origin DATA)" = "command line" || { echo "make pretrain-image needs DATA=PATH (an ImageNet-style folder: train/<class>/*.JPEG, val/<class>/*.JPEG)"; exit 2; }
	$(LAUNCH) -m train --task image $(if $(IMAGE_CONFIG),--config $(IMAGE_CONFIG)) --model $(MODEL) \
	  --dataset imagenet --data $(DATA) $(ARGS)

eval: install
	$(if $(filter 1,$(GPUS)),$(PYTHON),$(BIN)/torchrun --standalone --nproc-per-node $(GPUS)) -m eval --ckpt $(CKPT) \
	  $(if $(filter command line,$(origin DATA)),--data $(DATA)) $(if $(CLIPS),--clips $(CLIPS)) \
	  $(if $(CROPS),--crops $(CROPS)) $(ARGS)

predict: install
	@test -n "$(VIDEO)" || { echo "make predict needs VIDEO=FILE (video files, folders or list files; CKPT=... too)"; exit 2; }
	$(PYTHON) -m eval predict $(VIDEO) --ckpt $(CKPT) $(if $(CLIPS),--clips $(CLIPS)) $(if $(CROPS),--crops $(CROPS)) \
	  $(ARGS)

bench-prep: install
	@command -v ffmpeg >/dev/null || { echo "installing Debian's ffmpeg for the baseline"; \
	  apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null; }
	$(PYTHON) -m bench.prep $(ARGS)

bench-data: install bench-requirements
	$(PYTHON) -m bench.data $(ARGS)

bench-stages: install
	$(PYTHON) -m bench.stages $(ARGS)

bench-models: install
	$(PYTHON) -m bench.models $(ARGS)

bench-images: install
	$(PYTHON) -m bench.images $(ARGS)

bench-memory: install
	$(PYTHON) -m bench.memory $(ARGS)

bench-remote: install
	$(PYTHON) -m bench.remote --epochs --videos 240 --frames 16 --size 128 --shard-size 256K $(ARGS)

bench-startup: install
	$(PYTHON) -m bench.startup $(ARGS)

# no `install` prerequisite: a GPU machine may run it on its own python3 with the packages bench/gpu_check.py lists
GPU_CHECK_PY = $(if $(wildcard $(PYTHON)),$(PYTHON),python3)
gpu-check:
	$(GPU_CHECK_PY) -m bench.gpu_check $(foreach s,$(STEP),--step $(s)) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
