"""Train the guide's modified LeNet-5 (section 7) and look at what it learned.

With no arguments: trains on scikit-learn's handwritten digits (1,797 real images, installed with
scikit-learn, upscaled to 32 x 32; a seeded fifth held out for evaluation), prints the test
accuracy and saves pictures in runs/lenet5/. With --data DIR: trains on the MNIST files in DIR
(padded to 32 x 32), the 60,000 training images when they are there, else images 0-7,999 of the
test split with 8,000-9,999 held out.

    python examples/lenet5.py
    python examples/lenet5.py --data ~/mnist --epochs 10 --optimizer sgd --learning-rate 0.01

Pictures: curves.png (loss and accuracy per epoch), filters_C1.png (the 6 learned 5 x 5 filters),
feature_maps_<i>_<layer>.png (one test image after C1, S2, C3, S4 and C5: the guide's Figures 6-10
from the trained network), confusion_matrix.png.
"""
import _common
from gpucnn import zoo

NAME = "lenet5"
PROG = NAME + ".py"
EPOCHS = 10


def main(argv=None):
    p = _common.parser(NAME, "Train the guide's modified LeNet-5 and save pictures of it.",
                       epochs=EPOCHS, batch_size=32,
                       data_help="folder with the MNIST IDX files (default: the embedded digits)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                   help="Adam, or the guide's plain SGD")
    p.add_argument("--learning-rate", type=_common.positive_float, default=None,
                   help="default 0.001 for Adam, 0.01 (the guide's) for SGD")
    args = p.parse_args(argv)
    _common.start(args, PROG)
    if args.data is None:
        data = _common.digits_data(PROG, 32, seed=args.seed)
    else:
        data = _common.mnist_data(PROG, args.data, pad_to_32=True)
    data.limit(args.limit)
    model = _common.build(PROG, zoo.lenet5, input_shape=data.x_train.shape[1:], classes=10)
    out = _common.output_dir(PROG, args.out)
    print(data.describe())

    lr = args.learning_rate
    if lr is None:
        lr = 1e-3 if args.optimizer == "adam" else 0.01
    model.compile(optimizer=_common.optimizer(args.optimizer, lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.summary()
    with _common.Timer() as t:
        history = model.fit(data.x_train, data.y_train, batch_size=args.batch_size,
                            epochs=args.epochs, validation_data=(data.x_test, data.y_test),
                            verbose=args.verbose)
    print(f"trained {args.epochs} epochs with {args.optimizer}(learning_rate={lr:g}) in "
          f"{t.seconds:.1f} s")
    _, _, predicted = _common.classifier_report(model, data, 256)
    _common.saved(_common.cnn_pictures(model, data, history, predicted, out, "C1",
                                       "LeNet-5 (guide, section 7)"))


if __name__ == "__main__":
    main()
