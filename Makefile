# promptd — see README.md.
#   make demo    run promptd on its embedded defaults with a simulated alarm stream
#   make check   build everything and pass every test (also under ASan and UBSan)
#   make bench   print the benchmark figures
#   make fuzz    run each libFuzzer harness for FUZZ_SECONDS (default 600) seconds
# check, demo and bench first install any missing Debian 12 package (make deps).

PREFIX     ?= /usr/local
prefix     ?= $(PREFIX)
bindir     ?= $(prefix)/bin
# The units read /etc/promptd (systemd's ConfigurationDirectory is always under /etc).
sysconfdir ?= /etc
datadir    ?= $(prefix)/share
mandir     ?= $(datadir)/man
docdir     ?= $(datadir)/doc/promptd
# systemd reads units, sysusers.d and tmpfiles.d under /usr/lib and /usr/local/lib alike.
unitdir     ?= $(prefix)/lib/systemd/system
sysusersdir ?= $(prefix)/lib/sysusers.d
tmpfilesdir ?= $(prefix)/lib/tmpfiles.d

CC         ?= cc
PKG_CONFIG ?= pkg-config
CFLAGS     ?= -O2 -g
BUILD      ?= build

# Debian packages, by what needs them.
DEBS_BUILD := gcc make pkg-config librdkafka-dev libjansson-dev libutf8proc-dev liblua5.4-dev \
              libxxhash-dev zlib1g-dev libopenblas-dev libhiredis-dev libmicrohttpd-dev
DEBS_CHECK := libcriterion-dev kcat clang-format python3 redis-server systemd groff-base man-db \
              python3-yaml python3-prometheus-client valgrind
DEBS_BENCH := kcat redis-server redis-tools fasttext
# libFuzzer: `make check` replays the fuzz seeds, `make fuzz` fuzzes.
DEBS_FUZZ  := clang libclang-rt-dev
DEBS       := $(sort $(DEBS_BUILD) $(DEBS_CHECK) $(DEBS_BENCH) $(DEBS_FUZZ))
# PyTorch for the encoder benchmark and `make reference` only: `make check` needs no torch.
DEBS_TORCH := python3-torch python3-numpy python3-xxhash

PKGS      := rdkafka jansson libutf8proc lua5.4 libxxhash zlib openblas hiredis libmicrohttpd
TEST_PKGS := criterion

# pkg-config runs once, when first needed: after `deps` has installed the packages.
lazy = $(eval $1 := $$(shell $2))$($1)
PKG_CFLAGS  = $(call lazy,PKG_CFLAGS,$(PKG_CONFIG) --cflags $(PKGS))
PKG_LIBS    = $(call lazy,PKG_LIBS,$(PKG_CONFIG) --libs $(PKGS))
TEST_CFLAGS = $(call lazy,TEST_CFLAGS,$(PKG_CONFIG) --cflags $(TEST_PKGS))
TEST_LIBS   = $(call lazy,TEST_LIBS,$(PKG_CONFIG) --libs $(TEST_PKGS))

WARN      := -std=c17 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wvla
ALL_CFLAGS = $(WARN) -D_GNU_SOURCE -DPD_DATADIR='"$(datadir)/promptd"' -MMD -MP $(PKG_CFLAGS) \
             $(CPPFLAGS) $(CFLAGS)
ALL_LIBS   = $(PKG_LIBS) -lpthread -lm $(LDLIBS)
SANITIZE  := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

KERNELS    := normalize rng tokenize encoder encoder_backward triplet safetensors policy ppo adam
DAEMON     := cache checkpoint config hashmap journal kafka learner log luacore luapat message model \
              mockbroker offsets pack packwatch pd pipeline redis sandbox scenario selector session train \
              stats metrics notify observe promtext tuner clustermsg cluster
CTL        := promptctl ctl_simulate ctl_train simview ctl_common ctl_send ctl_replay ctl_status
KERNEL_SRC := $(KERNELS:%=kernels/%.c)
DAEMON_SRC := $(DAEMON:%=daemon/%.c)
LIB_SRC    := $(KERNEL_SRC) $(DAEMON_SRC)
UNIT_TESTS := config normalize message offsets log rng luapat lua journal checkpoint session \
              tokenize encoder safetensors cache policy notify metrics promtext train tuner \
              clustermsg
INTEG_TESTS := cli stream learning service ops cluster
TEST_HELPERS := tests/harness.c

LIB_OBJ      := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
LIB_OBJ_SAN  := $(LIB_SRC:%.c=$(BUILD)/san/%.o)
KERNEL_OBJ   := $(KERNEL_SRC:%.c=$(BUILD)/obj/%.o)
MODEL        := $(BUILD)/model/default.safetensors
UNIT_BINS    := $(UNIT_TESTS:%=$(BUILD)/tests/test_%)
UNIT_BINS_SAN := $(UNIT_TESTS:%=$(BUILD)/san/tests/test_%)
INTEG_BINS   := $(INTEG_TESTS:%=$(BUILD)/tests/test_%)
FORMAT_SRC   := $(wildcard daemon/*.[ch] $(KERNEL_SRC) $(KERNEL_SRC:.c=.h) tests/*.[ch] \
                bench/*.[ch] tools/*.[ch] fuzz/*.[ch])

.PHONY: all deps deps-torch check check-build check-unit check-integration check-format \
        check-fuzz format \
        demo bench fuzz fuzz-run soak install clean reference model
.DEFAULT_GOAL := all
# Keep objects between runs: they are intermediate files of the pattern rules.
.SECONDARY:

all: deps
	@$(MAKE) --no-print-directory $(BUILD)/promptd $(BUILD)/promptctl $(MODEL)

deps:
	@missing=""; \
	for p in $(DEBS); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' \
	        || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "deps: installing$$missing"; \
	    sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	    $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	        --no-install-recommends $$missing; \
	fi

deps-torch:
	@$(MAKE) --no-print-directory deps DEBS="$(DEBS_TORCH)"

# --- build ---

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/san/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(TEST_CFLAGS) $(SANITIZE) -O1 -c $< -o $@

$(BUILD)/promptd: $(BUILD)/obj/daemon/main.o $(LIB_OBJ)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ $(ALL_LIBS) -o $@

$(BUILD)/promptctl: $(CTL:%=$(BUILD)/obj/daemon/%.o) $(LIB_OBJ)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ $(ALL_LIBS) -o $@

# The same two, under AddressSanitizer and UndefinedBehaviorSanitizer, for the integration
# tests.
$(BUILD)/san/promptd: $(BUILD)/san/daemon/main.o $(LIB_OBJ_SAN)
	$(CC) $(SANITIZE) $(LDFLAGS) $^ $(ALL_LIBS) -o $@

$(BUILD)/san/promptctl: $(CTL:%=$(BUILD)/san/daemon/%.o) $(LIB_OBJ_SAN)
	$(CC) $(SANITIZE) $(LDFLAGS) $^ $(ALL_LIBS) -o $@

# The seeded random model that the encoder tests and references start from: 40 MB,
# generated rather than committed, the same bytes everywhere.
$(BUILD)/tools/make_model: $(BUILD)/obj/tools/make_model.o $(KERNEL_OBJ)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ $(ALL_LIBS) -o $@

# The alarm generator and the data the default model is trained on.
GEN_ALARMS := $(BUILD)/tools/gen_alarms
ALARM_DATA := $(BUILD)/data/alarms-train.jsonl $(BUILD)/data/alarms-test.jsonl
$(GEN_ALARMS): $(BUILD)/obj/tools/gen_alarms.o $(KERNEL_OBJ)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ $(ALL_LIBS) -o $@
$(BUILD)/data/alarms-train.jsonl: $(GEN_ALARMS)
	@mkdir -p $(@D)
	$(GEN_ALARMS) --seed 1 --count 16000 --split train -o $@
$(BUILD)/data/alarms-test.jsonl: $(GEN_ALARMS)
	@mkdir -p $(@D)
	$(GEN_ALARMS) --seed 1 --count 4000 --split test -o $@

# The trained default model is committed (4.6 MB); `make model` retrains it (about
# 3 minutes, byte-identical on the same CPU).
$(MODEL): model/default.safetensors
	@mkdir -p $(@D)
	cp $< $@

model: $(BUILD)/promptctl $(ALARM_DATA)
	OPENBLAS_NUM_THREADS=1 $(BUILD)/promptctl train $(BUILD)/data/alarms-train.jsonl \
	    --heldout $(BUILD)/data/alarms-test.jsonl --d 64 --lr 3e-3 --epochs 6 --seed 1 \
	    -o model/default.safetensors --curve $(BUILD)/model/default-curve.svg
	cp model/default.safetensors $(MODEL)

TEST_OBJ     := $(BUILD)/obj/tests/harness.o $(BUILD)/obj/tests/redis_harness.o
TEST_OBJ_SAN := $(BUILD)/san/tests/harness.o $(BUILD)/san/tests/redis_harness.o

$(BUILD)/tests/test_%: $(BUILD)/obj/tests/test_%.o $(TEST_OBJ) $(LIB_OBJ)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ $(ALL_LIBS) $(TEST_LIBS) -o $@

$(BUILD)/san/tests/test_%: $(BUILD)/san/tests/test_%.o $(TEST_OBJ_SAN) $(LIB_OBJ_SAN)
	@mkdir -p $(@D)
	$(CC) $(SANITIZE) $(LDFLAGS) $^ $(ALL_LIBS) $(TEST_LIBS) -o $@

# test_train runs the generator (order-only: it is not linked in).
$(BUILD)/tests/test_train $(BUILD)/san/tests/test_train: | $(GEN_ALARMS)

$(BUILD)/obj/tests/%.o: tests/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(TEST_CFLAGS) -c $< -o $@

# --- tests ---

# Everything is built first on both cores; the tests then run one suite at a time.
check: deps
	@$(MAKE) --no-print-directory -j2 check-build
	@$(MAKE) --no-print-directory check-format check-unit check-integration check-fuzz
	@echo "check: all tests passed"

check-format:
	@clang-format --dry-run --Werror $(FORMAT_SRC) \
	    || { echo "check: run 'make format' to apply the house style"; exit 1; }

# Criterion reports a test as passed even when LeakSanitizer finds a leak as its process
# exits, so the sanitized runs also fail on any sanitizer report in their output.
check-unit: $(UNIT_BINS) $(UNIT_BINS_SAN)
	@for t in $(UNIT_BINS); do echo "== $$t"; $$t --jobs 2 || exit 1; done
	@for t in $(UNIT_BINS_SAN); do \
	    echo "== $$t"; $$t --jobs 2 2>$(BUILD)/san.log; rc=$$?; cat $(BUILD)/san.log; \
	    [ $$rc -eq 0 ] || exit 1; \
	    if grep -qE 'ERROR: (Leak|Address)Sanitizer|runtime error' $(BUILD)/san.log; then \
	        echo "check: $$t: sanitizer report above"; exit 1; fi; \
	done

# The integration tests run the sanitized promptd and promptctl; their reports go to files
# (a process killed later would lose them on stderr), and any report fails the check.
SAN_REPORTS := $(BUILD)/san-reports
check-integration: $(BUILD)/promptd $(BUILD)/promptctl $(BUILD)/san/promptd $(BUILD)/san/promptctl \
                   $(MODEL) $(INTEG_BINS)
	@rm -rf $(SAN_REPORTS); mkdir -p $(SAN_REPORTS)
	@for t in $(INTEG_BINS); do \
	    echo "== $$t (promptd under ASan and UBSan)"; \
	    ASAN_OPTIONS=log_path=$(abspath $(SAN_REPORTS))/asan \
	    UBSAN_OPTIONS=log_path=$(abspath $(SAN_REPORTS))/ubsan:print_stacktrace=1 \
	    PROMPTD=$(BUILD)/san/promptd PROMPTCTL=$(BUILD)/san/promptctl $$t --jobs 1 || exit 1; \
	    if [ -n "$$(ls $(SAN_REPORTS))" ]; then \
	        cat $(SAN_REPORTS)/*; echo "check: $$t: sanitizer reports above"; exit 1; fi; \
	done
	@echo "== tests/test_systemd.sh"; bash tests/test_systemd.sh $(BUILD)
	@echo "== tests/test_valgrind.sh"; sh tests/test_valgrind.sh $(BUILD)

format:
	clang-format -i $(FORMAT_SRC)

# --- fuzzing ---
# One libFuzzer harness per decoder of untrusted bytes (fuzz/fuzz_*.c). The library is built
# again with clang, instrumented for coverage and sanitized, into an archive so that each
# harness links only the objects it reaches. Seeds are committed in fuzz/corpus/<harness>/,
# and inputs that once crashed in fuzz/regressions/<harness>/.

FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 600
FUZZERS      := message normalize config model checkpoint
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_CFLAGS   = $(WARN) -D_GNU_SOURCE -DPD_DATADIR='"$(datadir)/promptd"' -MMD -MP \
                $(PKG_CFLAGS) $(CPPFLAGS) -g -O1 $(FUZZ_SAN) -fsanitize=fuzzer-no-link
FUZZ_LIB     := $(BUILD)/fuzz/libpromptd.a
FUZZ_BINS    := $(FUZZERS:%=$(BUILD)/fuzz/fuzz_%)

$(BUILD)/fuzz/obj/%.o: %.c
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_LIB): $(LIB_SRC:%.c=$(BUILD)/fuzz/obj/%.o)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/fuzz/fuzz_%: $(BUILD)/fuzz/obj/fuzz/fuzz_%.o $(FUZZ_LIB)
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer $(LDFLAGS) $^ $(ALL_LIBS) -o $@

check-build: $(UNIT_BINS) $(UNIT_BINS_SAN) $(BUILD)/promptd $(BUILD)/promptctl \
             $(BUILD)/san/promptd $(BUILD)/san/promptctl $(MODEL) $(INTEG_BINS) $(FUZZ_BINS)

# Replays the seeds and the regressions without fuzzing: seconds, so `make check` runs it.
check-fuzz: $(FUZZ_BINS)
	@for f in $(FUZZERS); do \
	    dirs=fuzz/corpus/$$f; \
	    [ -d fuzz/regressions/$$f ] && dirs="$$dirs fuzz/regressions/$$f"; \
	    n=$$(find $$dirs -type f | wc -l); \
	    log=$(BUILD)/fuzz/replay-$$f.log; \
	    if $(BUILD)/fuzz/fuzz_$$f -runs=0 -timeout=10 $$dirs >$$log 2>&1; then \
	        echo "== fuzz_$$f: $$n inputs replayed"; \
	    else \
	        cat $$log; echo "check: fuzz_$$f fails on an input above"; \
	        exit 1; \
	    fi; \
	done

# Fuzzes a copy of the seeds in $(BUILD)/fuzz/corpus/<harness>/, which keeps what the runs
# found interesting; a finding is written to $(BUILD)/fuzz/findings/<harness>/. The parser
# looks every unknown key up in the whole table, which instrumentation makes slow (about 100
# runs a second), so config inputs are kept to 4 kB rather than the 13 kB of the largest seed.
FUZZ_OPTS_config := -max_len=4096

fuzz: deps
	@$(MAKE) --no-print-directory fuzz-run

fuzz-run: $(FUZZ_BINS)
	@failed=""; for f in $(FUZZERS); do \
	    corpus=$(BUILD)/fuzz/corpus/$$f findings=$(BUILD)/fuzz/findings/$$f; \
	    log=$(BUILD)/fuzz/fuzz-$$f.log; \
	    mkdir -p $$corpus $$findings; cp fuzz/corpus/$$f/* $$corpus/; \
	    [ -d fuzz/regressions/$$f ] && cp fuzz/regressions/$$f/* $$corpus/; \
	    case $$f in config) opts="$(FUZZ_OPTS_config)";; *) opts="";; esac; \
	    $(BUILD)/fuzz/fuzz_$$f -max_total_time=$(FUZZ_SECONDS) -timeout=30 $$opts \
	        -artifact_prefix=$$findings/ $$corpus >$$log 2>&1; rc=$$?; \
	    runs=$$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' $$log); \
	    if [ $$rc -eq 0 ]; then \
	        echo "fuzz_$$f: $(FUZZ_SECONDS) s, $${runs:-?} runs," \
	             "corpus $$(ls $$corpus | wc -l), no finding"; \
	    else \
	        why=$$(grep -m1 -E 'ERROR:|runtime error:' $$log); \
	        echo "fuzz_$$f: FINDING (exit $$rc): $$why; input in $$findings/, log in $$log"; \
	        failed="$$failed $$f"; \
	    fi; \
	done; \
	[ -z "$$failed" ] || { echo "fuzz: findings in$$failed"; exit 1; }

# --- soak ---

# SOAK_MINUTES (default 30) at half the measured maximum, with reloads and a Redis restart;
# prints a table and fails on an undecided prompt, memory growth or a descriptor leak.
$(BUILD)/tests/soak: $(BUILD)/obj/tests/soak.o $(TEST_OBJ) $(LIB_OBJ)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ $(ALL_LIBS) -o $@

soak: deps
	@$(MAKE) --no-print-directory $(BUILD)/promptd $(MODEL) $(BUILD)/tests/soak
	@$(BUILD)/tests/soak $(BUILD)/promptd

# --- running ---

demo: deps
	@$(MAKE) --no-print-directory $(BUILD)/promptd $(BUILD)/promptctl $(MODEL)
	@sh scripts/demo.sh $(BUILD)

BENCHES := stream lua encoder cache policy train

bench: deps deps-torch
	@$(MAKE) --no-print-directory $(BUILD)/promptd $(BUILD)/promptctl $(MODEL) $(ALARM_DATA) \
	    $(BENCHES:%=$(BUILD)/bench/bench_%)
	@$(BUILD)/bench/bench_stream $(BUILD)/promptd
	@$(BUILD)/bench/bench_lua
	@OPENBLAS_NUM_THREADS=1 $(BUILD)/bench/bench_encoder
	@$(BUILD)/bench/bench_cache
	@OPENBLAS_NUM_THREADS=1 $(BUILD)/bench/bench_policy
	@OPENBLAS_NUM_THREADS=1 $(BUILD)/bench/bench_train
	@sh bench/learning.sh $(BUILD)

# Regenerates the parity references under tests/reference/ (then commit them): the
# tokeniser corpus with the reference's ids, and the PyTorch tensors of the encoder.
reference: deps deps-torch
	@$(MAKE) --no-print-directory $(BUILD)/tools/make_model
	/usr/bin/python3 tests/reference/gen_tok_corpus.py
	/usr/bin/python3 tests/reference/encoder_ref.py --make-model $(BUILD)/tools/make_model
	OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 tests/reference/policy_ref.py
	/usr/bin/python3 tests/reference/train_ref.py --make-model $(BUILD)/tools/make_model

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(TEST_OBJ) $(LIB_OBJ)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ $(ALL_LIBS) -o $@

install: $(BUILD)/promptd $(BUILD)/promptctl $(MODEL)
	install -d $(DESTDIR)$(bindir) $(DESTDIR)$(sysconfdir)/promptd \
	    $(DESTDIR)$(datadir)/promptd/lua/scenarios $(DESTDIR)$(datadir)/promptd/model
	install -m 0755 $(BUILD)/promptd $(DESTDIR)$(bindir)/promptd
	install -m 0755 $(BUILD)/promptctl $(DESTDIR)$(bindir)/promptctl
	install -m 0644 $(MODEL) $(DESTDIR)$(datadir)/promptd/model/default.safetensors
	install -m 0644 lua/*.lua $(DESTDIR)$(datadir)/promptd/lua/
	install -m 0644 lua/scenarios/*.lua $(DESTDIR)$(datadir)/promptd/lua/scenarios/
	for pack in policies/*/; do \
	    install -d $(DESTDIR)$(datadir)/promptd/$$pack; \
	    install -m 0644 $$pack*.lua $(DESTDIR)$(datadir)/promptd/$$pack; \
	done
	@# The operator's configuration is never overwritten: a new one goes beside it.
	if [ -e $(DESTDIR)$(sysconfdir)/promptd/promptd.conf ]; then \
	    install -m 0644 conf/promptd.conf $(DESTDIR)$(sysconfdir)/promptd/promptd.conf.new; \
	else \
	    install -m 0644 conf/promptd.conf $(DESTDIR)$(sysconfdir)/promptd/promptd.conf; \
	fi
	install -d $(DESTDIR)$(unitdir) $(DESTDIR)$(sysusersdir) $(DESTDIR)$(tmpfilesdir) \
	    $(DESTDIR)$(mandir)/man1 $(DESTDIR)$(mandir)/man8 $(DESTDIR)$(docdir)
	for unit in promptd.service promptd@.service; do \
	    sed -e 's|/usr/bin/|$(bindir)/|g' -e 's|/etc/promptd|$(sysconfdir)/promptd|g' \
	        systemd/$$unit > $(DESTDIR)$(unitdir)/$$unit && chmod 0644 $(DESTDIR)$(unitdir)/$$unit; \
	done
	sed 's|/etc/promptd|$(sysconfdir)/promptd|g' systemd/promptd.tmpfiles \
	    > $(DESTDIR)$(tmpfilesdir)/promptd.conf && chmod 0644 $(DESTDIR)$(tmpfilesdir)/promptd.conf
	install -m 0644 systemd/promptd.sysusers $(DESTDIR)$(sysusersdir)/promptd.conf
	install -m 0644 man/promptd.8 $(DESTDIR)$(mandir)/man8/promptd.8
	install -m 0644 man/promptctl.1 $(DESTDIR)$(mandir)/man1/promptctl.1
	install -m 0644 conf/grafana-dashboard.json conf/prometheus-alerts.yml $(DESTDIR)$(docdir)/
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" -eq 0 ] && command -v systemd-sysusers >/dev/null; then \
	    systemd-sysusers $(sysusersdir)/promptd.conf && \
	    systemd-tmpfiles --create $(tmpfilesdir)/promptd.conf; \
	    systemctl daemon-reload 2>/dev/null || true; \
	fi

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
