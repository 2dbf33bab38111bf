# onnxforge targets for your project's Makefile. Copy this file beside your Makefile, then:
#
#     include onnxforge.mk          # CONFIG, ONNXFORGE, RUN_DIR can be set before the include or on the command line
#
#   make model            build the model: every stage of $(CONFIG) into $(RUN_DIR)/<name>/, decisions recorded in
#                         $(CONFIG).lock (commit it); stages whose inputs did not change are reused
#   make model-check      what CI runs: the same with --locked — fails if a check fails (onnxforge exit 1) or if a
#                         decision the lock holds would have to be measured again (the lock is stale: run
#                         `make model-remeasure` and commit the lock)
#   make model-remeasure  measure the decisions again (quantize candidates, speed gates) and rewrite the lock
#   make model-report     (re)write the report of the last run into $(RUN)/report/ (report.md for a PR comment)
#   make model-clean      remove the run folder
#
# A failed target makes make exit 2 (make's own code for a failed recipe); onnxforge's code is in the
# "Error N" line: 1 a check failed, 2 bad input, 3 a bug.

CONFIG ?= pipeline.yaml
ONNXFORGE ?= onnxforge
RUN_DIR ?= runs
ONNXFORGE_FLAGS ?=
# the run folder is $(RUN_DIR)/<the config's top-level name:>
MODEL_NAME ?= $(shell sed -n 's/^name:[[:space:]]*["'\'']\{0,1\}\([^"'\''#[:space:]]*\).*/\1/p' $(CONFIG) | head -n 1)
RUN ?= $(RUN_DIR)/$(MODEL_NAME)

.PHONY: model model-check model-remeasure model-report model-clean

model:
	$(ONNXFORGE) run $(CONFIG) --run-dir $(RUN_DIR) $(ONNXFORGE_FLAGS)
	@echo "report: $(RUN)/report.md (also .html, .json)"

model-check:
	$(ONNXFORGE) run $(CONFIG) --run-dir $(RUN_DIR) --locked $(ONNXFORGE_FLAGS)

model-remeasure:
	$(ONNXFORGE) run $(CONFIG) --run-dir $(RUN_DIR) --remeasure $(ONNXFORGE_FLAGS)

model-report:
	@test -n "$(MODEL_NAME)" || { echo "onnxforge.mk: no top-level name: in $(CONFIG) — set MODEL_NAME" >&2; exit 2; }
	$(ONNXFORGE) report $(RUN) --config $(CONFIG) --out $(RUN)/report

model-clean:
	@test -n "$(MODEL_NAME)" || { echo "onnxforge.mk: no top-level name: in $(CONFIG) — set MODEL_NAME" >&2; exit 2; }
	rm -rf $(RUN)
