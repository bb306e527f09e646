// Graceful stop on SIGTERM/SIGINT (Slurm sends SIGTERM before killing a job): the first
// signal sets a flag the training loop polls; a second one exits at once (atomic writes keep
// every file on disk valid either way).
#pragma once

namespace agate {

class StopSignals {
 public:
  StopSignals();   // installs the handlers
  ~StopSignals();  // restores the previous ones
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  static bool requested();
  static int signal_number();  // the first signal received, 0 if none
};

}  // namespace agate
