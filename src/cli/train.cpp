#include <cstdio>
#include <iostream>

#include "agate/train/recipe.h"
#include "agate/io/safetensors.h"
#include "agate/train/trainer.h"
#include "agate/util/error.h"
#include "args.h"
#include "commands.h"

namespace agate::cli {

namespace {

void print_schema() {
  std::printf("| key | type | default | range | meaning |\n|---|---|---|---|---|\n");
  for (const auto& k : recipe_schema()) {
    std::string def = k.required ? "**required**" : (k.default_value.empty() ? "\"\"" : "`" + k.default_value + "`");
    std::string help = k.help;
    if (!k.choices.empty()) {
      help += " (";
      for (size_t i = 0; i < k.choices.size(); ++i) help += (i ? ", " : "") + k.choices[i];
      help += ")";
    }
    const std::string range = k.range.empty() ? "" : "`" + k.range + "`";
    std::printf("| `%s` | %s | %s | %s | %s |\n", k.path.c_str(), k.type.c_str(), def.c_str(), range.c_str(), help.c_str());
  }
}

}  // namespace

int cmd_train(const Argv& argv) {
  Args args("train", "RECIPE.yaml [key=value ...] [--dry-run]",
            "Trains Attention-Gates (and LoRA) on a frozen base model, or a whole model in\n"
            "train.mode=pretrain, as the YAML recipe says. key=value arguments override recipe keys\n"
            "(e.g. train.steps=200 model.dtype=bfloat16). --dry-run validates the recipe, model, data\n"
            "and output folder and prints the plan without training.\n"
            "Re-running the same command in a run folder with a complete checkpoint resumes from the\n"
            "newest one. SIGTERM/SIGINT finish the current step, write a checkpoint and exit with\n"
            "status 3 (a second signal exits at once).",
            {{"dry-run", "", "validate and print the plan, train nothing", ""},
             {"fresh", "", "refuse to touch a run folder that already holds a run (default: resume it)", ""},
             {"resume-from", "DIR", "resume from this checkpoint folder instead of the newest", ""},
             {"force", "", "start over in a run folder whose checkpoints are all incomplete (they are overwritten)", ""},
             {"print-schema", "", "print every recipe key as a markdown table and exit", ""},
             {"device", "D", "run.device: auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda or cuda:N", ""}});
  if (!args.parse(argv)) return 0;
  if (args.flag("print-schema")) {
    print_schema();
    return 0;
  }
  if (args.positionals().empty()) throw_usage("missing the recipe (" + args.usage() + ")", "e.g. agate train recipes/tiny/cpt.yaml");
  std::vector<std::string> overrides(args.positionals().begin() + 1, args.positionals().end());
  if (args.has("device")) overrides.push_back("run.device=" + args.get("device"));
  Recipe recipe = Recipe::load(args.positionals()[0], overrides);
  ResumeOptions resume;
  resume.fresh = args.flag("fresh");
  resume.resume_from = args.get_or("resume-from", "");
  resume.force = args.flag("force");
  if (resume.fresh && !resume.resume_from.empty()) throw_usage("--fresh and --resume-from exclude each other");
  if (args.flag("dry-run")) {
    // With weights: everything a run loads, checked. A config-only folder (e.g. a 7B model's
    // config.json): the recipe, the data and the counts, without weights.
    const TrainPlan plan = WeightFolder::present(recipe.str("model.path")) || recipe.integer("model.init_seed") >= 0
                               ? Trainer(recipe, resume).plan()
                               : plan_recipe(recipe);
    std::printf("recipe %s is valid\n%s", args.positionals()[0].c_str(), plan.describe().c_str());
    return 0;
  }
  Trainer trainer(recipe, resume);
  TrainSummary s = trainer.run();
  if (s.preempted) {
    std::printf("stopped at step %lld after writing a checkpoint; run the same command to resume\n", (long long)s.steps);
    return 3;
  }
  std::printf("trained %lld steps: loss %.4f, val loss %.4f (base %.4f), keep %.3f, %.0f tok/s\n", (long long)s.steps,
              s.train_loss, s.val_loss, s.val_base_loss, s.keep, s.tokens_per_s);
  return 0;
}

}  // namespace agate::cli
