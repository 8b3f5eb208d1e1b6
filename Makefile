# promptd — see README.md.
#   make demo    run promptd on its embedded defaults with a simulated alarm stream
#   make check   build everything and pass every test (also under ASan and UBSan)
#   make bench   print the benchmark figures
# check, demo and bench first install any missing Debian 12 package (make deps).

PREFIX     ?= /usr/local
prefix     ?= $(PREFIX)
bindir     ?= $(prefix)/bin
sysconfdir ?= $(prefix)/etc
datadir    ?= $(prefix)/share

CC         ?= cc
PKG_CONFIG ?= pkg-config
CFLAGS     ?= -O2 -g
BUILD      ?= build

# Debian packages, by what needs them.
DEBS_BUILD := gcc make pkg-config librdkafka-dev libjansson-dev libutf8proc-dev liblua5.4-dev \
              libxxhash-dev zlib1g-dev
DEBS_CHECK := libcriterion-dev kcat clang-format python3
DEBS_BENCH := kcat
DEBS       := $(sort $(DEBS_BUILD) $(DEBS_CHECK) $(DEBS_BENCH))

PKGS      := rdkafka jansson libutf8proc lua5.4 libxxhash zlib
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

KERNELS    := normalize rng
DAEMON     := checkpoint config journal kafka log luacore luapat message mockbroker offsets pack packwatch pd \
              pipeline sandbox stats
KERNEL_SRC := $(KERNELS:%=kernels/%.c)
DAEMON_SRC := $(DAEMON:%=daemon/%.c)
LIB_SRC    := $(KERNEL_SRC) $(DAEMON_SRC)
UNIT_TESTS := config normalize message offsets log rng luapat lua journal checkpoint
INTEG_TESTS := cli stream
TEST_HELPERS := tests/harness.c

LIB_OBJ      := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
LIB_OBJ_SAN  := $(LIB_SRC:%.c=$(BUILD)/san/%.o)
UNIT_BINS    := $(UNIT_TESTS:%=$(BUILD)/tests/test_%)
UNIT_BINS_SAN := $(UNIT_TESTS:%=$(BUILD)/san/tests/test_%)
INTEG_BINS   := $(INTEG_TESTS:%=$(BUILD)/tests/test_%)
FORMAT_SRC   := $(wildcard daemon/*.[ch] $(KERNEL_SRC) $(KERNEL_SRC:.c=.h) tests/*.[ch] bench/*.[ch])

.PHONY: all deps check check-unit check-integration check-format format demo bench install \
        clean
.DEFAULT_GOAL := all
# Keep objects between runs: they are intermediate files of the pattern rules.
.SECONDARY:

all: deps
	@$(MAKE) --no-print-directory $(BUILD)/promptd

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

# --- build ---

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/san/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(TEST_CFLAGS) $(SANITIZE) -O1 -c $< -o $@

$(BUILD)/promptd: $(BUILD)/obj/daemon/main.o $(LIB_OBJ)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ $(ALL_LIBS) -o $@

$(BUILD)/tests/test_%: $(BUILD)/obj/tests/test_%.o $(BUILD)/obj/tests/harness.o $(LIB_OBJ)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ $(ALL_LIBS) $(TEST_LIBS) -o $@

$(BUILD)/san/tests/test_%: $(BUILD)/san/tests/test_%.o $(BUILD)/san/tests/harness.o $(LIB_OBJ_SAN)
	@mkdir -p $(@D)
	$(CC) $(SANITIZE) $(LDFLAGS) $^ $(ALL_LIBS) $(TEST_LIBS) -o $@

$(BUILD)/obj/tests/%.o: tests/%.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(TEST_CFLAGS) -c $< -o $@

# --- tests ---

check: deps
	@$(MAKE) --no-print-directory check-format check-unit check-integration
	@echo "check: all tests passed"

check-format:
	@clang-format --dry-run --Werror $(FORMAT_SRC) \
	    || { echo "check: run 'make format' to apply the house style"; exit 1; }

check-unit: $(UNIT_BINS) $(UNIT_BINS_SAN)
	@for t in $(UNIT_BINS) $(UNIT_BINS_SAN); do \
	    echo "== $$t"; $$t --jobs 2 || exit 1; \
	done

check-integration: $(BUILD)/promptd $(INTEG_BINS)
	@for t in $(INTEG_BINS); do \
	    echo "== $$t"; PROMPTD=$(BUILD)/promptd $$t --jobs 1 || exit 1; \
	done

format:
	clang-format -i $(FORMAT_SRC)

# --- running ---

demo: deps
	@$(MAKE) --no-print-directory $(BUILD)/promptd
	@sh scripts/demo.sh $(BUILD)/promptd

BENCHES := stream lua

bench: deps
	@$(MAKE) --no-print-directory $(BUILD)/promptd $(BENCHES:%=$(BUILD)/bench/bench_%)
	@$(BUILD)/bench/bench_stream $(BUILD)/promptd
	@$(BUILD)/bench/bench_lua

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(LIB_OBJ)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) $^ $(ALL_LIBS) -o $@

install: $(BUILD)/promptd
	install -d $(DESTDIR)$(bindir) $(DESTDIR)$(sysconfdir)/promptd $(DESTDIR)$(datadir)/promptd/lua
	install -m 0755 $(BUILD)/promptd $(DESTDIR)$(bindir)/promptd
	install -m 0644 conf/promptd.conf $(DESTDIR)$(sysconfdir)/promptd/promptd.conf
	install -m 0644 lua/*.lua $(DESTDIR)$(datadir)/promptd/lua/
	for pack in policies/*/; do \
	    install -d $(DESTDIR)$(datadir)/promptd/$$pack; \
	    install -m 0644 $$pack*.lua $(DESTDIR)$(datadir)/promptd/$$pack; \
	done

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
