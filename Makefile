# Thin wrapper over CMake and the scripts: the README's commands.
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
SOURCES     = $(shell find lib config db server gateway consumers scheduler mock tests bench \
                -name '*.[ch]' 2>/dev/null | sort)

.PHONY: all deps build build-asan run test bench format check-format stop clean

all: build

deps:
	@scripts/deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

build-asan: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DCCM_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j$(JOBS)

# Private PostgreSQL, Redis and Kafka under var/run, migrate, then every ccm
# process; Ctrl+C stops them all and the servers this run started.
run: build
	@scripts/run.sh

# Its own servers (other ports, var/test), unit + integration + end-to-end
# tests, once on the normal build and once under ASan/UBSan.
test: build build-asan check-format
	@scripts/test.sh

bench: build
	@scripts/bench.sh

format:
	@clang-format -i $(SOURCES)

check-format:
	@clang-format --dry-run --Werror $(SOURCES)

stop:
	@scripts/stack.sh stop --all

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
