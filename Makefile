# lenscast: `make run` and `make test` set up everything they need on a fresh Debian 12 machine.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -euo pipefail -c

# System packages: build (FFmpeg, OpenCV, clang for bindgen) and test tools (ffmpeg CLI,
# mkvinfo, Chromium, GStreamer, nginx for tests/nginx.rs). Names verified on Debian 12
# (see ../shared/PLATFORM.md).
APT_PACKAGES := pkg-config clang libclang-dev libopencv-dev opencv-data \
	libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev \
	ffmpeg mkvtoolnix chromium chromium-driver openssl nginx \
	gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
# Only `make bench` needs these: Icecast, the fan-out bench's yardstick.
BENCH_PACKAGES := icecast2

LISTEN ?= 127.0.0.1:8080
ARGS ?=
BIN := target/release/lenscast
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test deps apt npm build lint bench bench-latency soak-latency fixtures clean fuzz fuzz-smoke fuzz-tools

## run: install what is missing, build, and serve the built-in demo (URLs are printed).
run: deps build
	exec $(BIN) serve --listen $(LISTEN) $(ARGS)

## test: install what is missing, then run every test (Rust unit + integration, browser).
test: deps build
	# One test at a time: the pipeline tests are CPU-bound, and this machine has two cores.
	cargo test --release --workspace --lib --bins --tests -- --test-threads=1
	LENSCAST_BIN=$(CURDIR)/$(BIN) node --test --test-concurrency=1 tests/browser/
	$(MAKE) fuzz-smoke

deps: apt npm

apt:
	missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done)
	if [ -n "$$missing" ]; then
		echo "installing: $$missing"
		$(SUDO) apt-get update -q
		# Tests start their own nginx (and Icecast) on loopback ports; installing the package
		# would also start a system one on port 80 (and the install fails if that start does).
		# Debian's policy-rc.d (exit 101: "forbidden") holds service starts off for this install
		# alone; a machine that has its own policy keeps it.
		if [ ! -e /usr/sbin/policy-rc.d ]; then
			printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null
			$(SUDO) chmod 755 /usr/sbin/policy-rc.d
			trap '$(SUDO) rm -f /usr/sbin/policy-rc.d' EXIT
		fi
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing
	fi
	# Node.js may come from elsewhere than Debian (its nodejs then conflicts with Debian's npm):
	# install Debian's only when there is no node or npm at all.
	if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
		$(SUDO) apt-get update -q
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends nodejs npm
	fi

npm:
	if [ ! -d node_modules/hls.js ] || [ ! -d node_modules/playwright-core ] \
		|| [ package-lock.json -nt node_modules/.package-lock.json ]; then
		npm ci --no-audit --no-fund
	fi

build:
	cargo build --release

lint:
	cargo fmt --all -- --check
	# Release profile, like every other target: a dev-profile run would rebuild OpenCV bindings.
	cargo clippy --release --workspace --all-targets -- -D warnings

## bench: the fan-out benchmark: a 0.54 Mbit/s VP8 stream to 1000 viewers of lenscast
## (/ws/view, /live.webm) and of Icecast 2.4 side by side, 20 s each, then a join storm of 500
## viewers/s; CPU-s per GB, RSS per viewer, join p50/p99 (results in target/bench/fanout.json).
## e.g. `make bench BENCH_ARGS="--viewers 1000,5000"` or BENCH_ARGS="--viewers 50 --seconds 5".
bench: deps build
	$(MAKE) apt APT_PACKAGES="$(BENCH_PACKAGES)"
	ulimit -n 65536 2>/dev/null || ulimit -n $$(ulimit -Hn)
	cargo bench --bench fanout -- --server $(BIN) $(BENCH_ARGS)

## bench-latency: glass-to-glass latency of lenscast (presenter page -> server -> viewer page,
## headless Chromium, fake camera) against the browser's floor (MediaRecorder, MSE and the
## viewer's live-edge policy in one page), 5 runs of 10 s: stamp age p50/p90 and presented fps
## (results in target/bench/latency.json). e.g. LATENCY_ARGS="--runs 1 --seconds 5", or
## LATENCY_ARGS="--recorder mediarecorder" for the presenter on the floor's recorder.
bench-latency: deps build
	LENSCAST_BIN=$(CURDIR)/$(BIN) node tests/browser/latency-bench.mjs $(LATENCY_ARGS)

## soak-latency: one presenter and one viewer for 30 minutes, stamp age p50 per minute; fails
## if the last minute's p50 is over 50 ms from the first's (target/bench/latency-soak.json).
## e.g. LATENCY_ARGS="--soak-minutes 2".
soak-latency: deps build
	LENSCAST_BIN=$(CURDIR)/$(BIN) node tests/browser/latency-bench.mjs --soak-minutes 30 $(LATENCY_ARGS)

# Fuzzing (cargo-fuzz, libFuzzer) of the EBML reader, the remuxer and the whole ingest path,
# on crates/lenscast-webm alone (no FFmpeg/OpenCV, so it builds in seconds). The nightly
# toolchain comes with these machines; cargo-fuzz is installed from crates.io if missing.
FUZZ_TARGETS := reader remux ingest
FUZZ_FLAGS := -max_len=16384
FUZZ_SECONDS ?= 600

fuzz-tools:
	if ! rustup toolchain list | grep -q '^nightly'; then
		echo "the nightly toolchain is missing (rustup toolchain install nightly)" >&2; exit 1
	fi
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# The corpus starts from the fixtures (their first 16 KiB) and grows in fuzz/corpus/.
fuzz/corpus/%:
	mkdir -p $@
	for f in fixtures/*.webm; do head -c 16384 "$$f" > "$@/$$(basename $$f).seed"; done

## fuzz: run each target for FUZZ_SECONDS (default 600) on both cores; crashes land in
## fuzz/artifacts/ and belong in fuzz/regressions/<target>/ as regression tests.
fuzz: fuzz-tools $(addprefix fuzz/corpus/,$(FUZZ_TARGETS))
	cd fuzz
	for t in $(FUZZ_TARGETS); do
		cargo +nightly fuzz run -O $$t corpus/$$t -- $(FUZZ_FLAGS) -jobs=2 -workers=2 \
			-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1
	done

## fuzz-smoke (part of `make test`): replay every regression input, then 15 s per target.
fuzz-smoke: fuzz-tools $(addprefix fuzz/corpus/,$(FUZZ_TARGETS))
	cd fuzz
	for t in $(FUZZ_TARGETS); do
		if compgen -G "regressions/$$t/*" >/dev/null; then
			cargo +nightly fuzz run -O $$t regressions/$$t -- -runs=0
		fi
		cargo +nightly fuzz run -O $$t corpus/$$t -- $(FUZZ_FLAGS) -max_total_time=15
	done
	# Reached only if no target crashed (a crash fails the run above).
	echo "fuzz: $(words $(FUZZ_TARGETS)) passed, 0 failed"

## fixtures: regenerate the committed media in fixtures/ (see fixtures/README.md).
fixtures: deps
	bash fixtures/make-fixtures.sh

clean:
	cargo clean
	rm -rf node_modules
