// The checks a training run passes before any work: the recipe's keys against each other and
// the file system, the run folder against the resume options, the datasets against the model.
#pragma once

#include <optional>
#include <string>

#include "agate/data/dataset.h"
#include "agate/data/loader.h"
#include "agate/model/config.h"
#include "agate/train/recipe.h"
#include "agate/train/run_config.h"

namespace agate {

struct ResumeOptions {
  bool fresh = false;        // refuse to touch a run folder that already holds a run
  std::string resume_from;   // a checkpoint folder; empty = the newest complete one, if any
  bool force = false;        // start over in a run folder whose checkpoints are all incomplete
};

// What relates keys to each other (a run that trains nothing, micro_batch dividing the
// global batch, ...), and the folders (model, data, run.dir writable); the
// single keys' ranges are the schema's. Throws with the key's file:line and a hint.
void check_recipe(const Recipe& recipe);

// --fresh refuses a folder that already holds a run; --resume-from needs a complete checkpoint;
// a folder with only incomplete checkpoints needs --force.
void check_run_folder(const std::string& run_dir, const ResumeOptions& resume);

// The run's base model on `device` in model.dtype: its weights, or random ones
// (model.init_seed, pretraining). Refuses a config-only folder (a dry run plans with it).
LlamaModel load_run_model(const ModelSection& model, c10::Device device);

struct RunData {
  Dataset train;
  std::optional<Dataset> val;
};

// Opens data.train (and data.val) and checks them against the model: seq_len within its
// positions, token ids within its vocabulary, the dataset's tokenizer the model's.
RunData open_run_data(const Recipe& recipe, const ModelConfig& model);

// The training data's loader options from the recipe (data.seq_len, train.global_batch,
// data.sft_mode), one rank of one; prefetch 0 for loaders that only count or position.
LoaderOptions train_loader_options(const RunConfig& config, int prefetch = 0);

}  // namespace agate
