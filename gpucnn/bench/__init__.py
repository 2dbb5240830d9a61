"""gpucnn's benchmark, side by side with PyTorch: ``python -m gpucnn.bench``.

It measures what users feel, against what they would pick instead, in one process:

- per op (``ops``): conv forward / input gradient / kernel gradient, transposed conv, max and
  average pooling forward and backward, softmax + cross-entropy, at the LeNet-5 shapes (batch
  128), the AlexNet-small shapes (``zoo.alexnet((32, 32, 3), 10, width=0.25, dense_units=256)``,
  batch 128) and the conv autoencoder shapes (28 x 28 x 1, batch 128), through the active
  backend's kernel set;
- end to end (``e2e``): images per second of full training steps through ``Model.fit`` (forward,
  backward, optimizer update, the per-epoch shuffle, as a user runs it) of LeNet-5 at batch 32,
  128 and 512, AlexNet-small and the autoencoder at 128; LeNet-5 inference (``Model.predict``) at
  512; the per-step time at batch 1 (the framework's own overhead); the peak memory of training.

Every measurement interleaves gpucnn and PyTorch (when importable) in the same process with the
same thread count, warms up first and reports the median of repeats; the tables give the time,
the achieved GFLOP/s and the speed ratio gpucnn / PyTorch (above 1: gpucnn is faster). See
``python -m gpucnn.bench --help`` and ``docs/benchmarks.md``.
"""
