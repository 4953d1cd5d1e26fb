//! PreActResNet18 on any backend (issue 2).
