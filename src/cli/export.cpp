#include <cstdio>

#include "agate/train/export_gates.h"
#include "agate/util/threads.h"
#include "args.h"
#include "commands.h"

namespace agate::cli {

int cmd_export(const Argv& argv) {
  Args args("export", "RUN_DIR [--step N] --out DIR [--model DIR] [--force]",
            "Writes a run's trained gates on their own: gates.safetensors (HF-style names,\n"
            "model.layers.{i}.self_attn.kv_gate.*), lora.safetensors when LoRA was trained,\n"
            "kvgate_config.json (gate sizes, threshold, sinks/window, base model shape and weight\n"
            "fingerprint, provenance, keep ratios measured on validation data), head_keep_ratio.tsv\n"
            "and a model card. The base model is the run's model.path, relative to the folder the run\n"
            "trained in (or --model); its weights must be those the checkpoint was trained on. --out must\n"
            "be new, empty or an earlier export (anything else takes --force); the files are moved in\n"
            "only when all are written.",
            {{"step", "N", "checkpoint step to export (default: the newest)", ""},
             {"out", "DIR", "output folder", ""},
             {"model", "DIR", "the base model the run trained on (default: the run's model.path)", ""},
             {"force", "", "write into a non-empty folder that holds no export (its files of the same names are replaced)", ""},
             {"batches", "K", "validation sequences used to measure keep ratios", "4"},
             {"threads", "N", "intra-op threads (0 = all cores)", "0"},
             device_option()});
  if (!args.parse(argv)) return 0;
  args.expect_positionals(1, "the run folder RUN_DIR");
  configure_threads(args.threads());
  ExportOptions o;
  o.run_dir = args.positionals()[0];
  o.step = args.has("step") ? args.get_int("step") : -1;
  o.out = args.get("out");
  o.batches = args.get_int("batches", 1, 1 << 20);
  o.device = args.get("device");
  o.model = args.get_or("model", "");
  o.force = args.flag("force");
  const double keep = export_gates(o);
  std::printf("exported gates to %s (mean keep ratio %.3f)\n", o.out.c_str(), keep);
  return 0;
}

}  // namespace agate::cli
