"""The names inside a trial checkpoint folder. Torch-free: the driver and the tracking code only read the folders."""

STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "trial_config.json"
ADAPTER_DIR = "adapter"
TASK_FILE = "task.json"  # what using the adapter needs besides its weights: base model, labels, prompt (see Predictor)
