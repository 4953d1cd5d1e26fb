//! Dataset readers: CIFAR-10 / CIFAR-100 / GTSRB binary formats (issue 2).
