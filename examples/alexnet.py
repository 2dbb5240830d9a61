"""Train a small AlexNet (section 5) and look at what it learned.

AlexNet at full size (227 x 227 x 3 inputs, 62,378,344 parameters) needs ImageNet and a GPU; this
script trains the same layer sequence scaled down -- ``zoo.alexnet(input_shape, classes,
width=0.25, dense_units=256)`` with the small-input stem (a 3 x 3 / 1 first conv in place of
11 x 11 / 4) -- on 32 x 32 colour images:

- with --data DIR: CIFAR-10 from its binary files in DIR (data_batch_1.bin ... test_batch.bin);
  50,000 training images take long on a CPU, use --limit N there or a GPU (--backend cuda);
- with no arguments: NOT a colour data set -- scikit-learn's handwritten digits (embedded),
  upscaled to 32 x 32 and copied into 3 identical channels, a seeded fifth held out. It shows that
  the network trains, not how it does on natural images.

    python examples/alexnet.py
    python examples/alexnet.py --data ~/cifar-10-batches-bin --limit 5000 --epochs 10

Pictures in runs/alexnet/: curves.png, filters_conv1.png, feature_maps_<i>_<layer>.png after each
conv and pooling layer, confusion_matrix.png.
"""
import numpy as np

import _common
from gpucnn import optimizers, zoo

NAME = "alexnet"
PROG = NAME + ".py"
EPOCHS = 8


def main(argv=None):
    p = _common.parser(NAME, "Train a scaled-down AlexNet on 32 x 32 colour images.",
                       epochs=EPOCHS, batch_size=64,
                       data_help="folder with the binary CIFAR-10 batches "
                                 "(default: the embedded digits in 3 channels)")
    p.add_argument("--width", type=_common.positive_float, default=0.25,
                   help="multiplier of AlexNet's filter counts (96, 256, 384, 384, 256)")
    p.add_argument("--dense-units", type=_common.positive_int, default=256, help="units of fc6 and fc7 (4096 in "
                   "AlexNet)")
    p.add_argument("--dropout", type=_common.fraction, default=0.5, help="dropout rate after fc6 and fc7")
    p.add_argument("--learning-rate", type=_common.positive_float, default=1e-3, help="Adam's learning rate")
    args = p.parse_args(argv)
    _common.start(args, PROG)
    if args.data is None:
        data = _common.digits_data(PROG, 32, seed=args.seed)
        data.x_train = np.repeat(data.x_train, 3, axis=-1)
        data.x_test = np.repeat(data.x_test, 3, axis=-1)
        data.source += ", copied into 3 channels (a stand-in: no colour data is embedded)"
    else:
        data = _common.cifar10_data(PROG, args.data)
    data.limit(args.limit)
    model = _common.build(PROG, zoo.alexnet, input_shape=data.x_train.shape[1:], classes=10,
                          dropout=args.dropout, width=args.width, dense_units=args.dense_units)
    out = _common.output_dir(PROG, args.out)
    print(data.describe())

    model.compile(optimizer=optimizers.Adam(learning_rate=args.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.summary()
    history = model.fit(data.x_train, data.y_train, batch_size=args.batch_size,
                        epochs=args.epochs, validation_data=(data.x_test, data.y_test),
                        verbose=args.verbose)
    _, _, predicted = _common.classifier_report(model, data, 256)
    _common.saved(_common.cnn_pictures(model, data, history, predicted, out, "conv1",
                                       f"AlexNet, width {args.width:g}"))


if __name__ == "__main__":
    main()
