//! safetensors load/save with PyTorch state_dict names (issue 2).
