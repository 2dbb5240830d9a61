"""Train the guide's perceptron (section 1) to tell handwritten 0s from 1s.

One neuron: ``y = sigmoid(sum_i x_i w_i + b)`` on the flattened pixels, trained with binary
cross-entropy. With no arguments it uses the 0s and 1s of scikit-learn's 8 x 8 handwritten digits
(embedded; a seeded fifth held out), with --data DIR the 0s and 1s of the MNIST files in DIR.

    python examples/perceptron.py
    python examples/perceptron.py --data ~/mnist

Pictures in runs/perceptron/: curves.png, weights.png (the 64 or 784 learned weights laid out as
an image: blue pixels vote for 0, red for 1), confusion_matrix.png.
"""
import numpy as np

import _common
from gpucnn import optimizers, plots, zoo

NAME = "perceptron"
PROG = NAME + ".py"
EPOCHS = 10


def zeros_and_ones(data):
    """Keep digits 0 and 1, flatten the images to vectors."""
    for part in ("train", "test"):
        x, y = getattr(data, "x_" + part), getattr(data, "y_" + part)
        keep = y <= 1
        setattr(data, "x_" + part, x[keep].reshape(int(keep.sum()), -1))
        setattr(data, "y_" + part, y[keep])
    data.class_names = ["0", "1"]
    return data


def main(argv=None):
    p = _common.parser(NAME, "Train a perceptron to separate handwritten 0s and 1s.",
                       epochs=EPOCHS, batch_size=16,
                       data_help="folder with the MNIST IDX files (default: the embedded digits)")
    p.add_argument("--learning-rate", type=_common.positive_float, default=0.01, help="Adam's learning rate")
    args = p.parse_args(argv)
    _common.start(args, PROG)
    if args.data is None:
        data = _common.digits_data(PROG, 8, seed=args.seed)
        side = 8
    else:
        data = _common.mnist_data(PROG, args.data, pad_to_32=False)
        side = 28
    data = zeros_and_ones(data).limit(args.limit)
    model = _common.build(PROG, zoo.perceptron, n_features=data.x_train.shape[1])
    out = _common.output_dir(PROG, args.out)
    print(data.describe() + " (digits 0 and 1 only)")

    model.compile(optimizer=optimizers.Adam(learning_rate=args.learning_rate),
                  loss="binary_crossentropy", metrics=["accuracy"])
    model.summary()
    y_train = data.y_train.astype(np.float32)[:, None]
    y_test = data.y_test.astype(np.float32)[:, None]
    history = model.fit(data.x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                        validation_data=(data.x_test, y_test), verbose=args.verbose)
    loss, acc = model.evaluate(data.x_test, y_test, batch_size=256, verbose=0)
    predicted = (np.asarray(model.predict(data.x_test, verbose=0)).reshape(-1) > 0.5)
    predicted = predicted.astype(np.int64)
    print(f"test loss {loss:.4f}  test accuracy {100 * acc:.2f}% "
          f"({int((predicted == data.y_test).sum()):,} of {len(predicted):,} right)")
    w = model.get_layer("neuron").kernel.numpy()[:, 0]
    if not _common.main_rank():
        return                             # rank 0 draws for a --distributed job
    _common.saved([
        plots.curves(history, out / "curves.png", title="perceptron, 0 vs 1"),
        plots.weights_image(w, (side, side), out / "weights.png",
                            title="perceptron weights (red: evidence for 1)"),
        plots.confusion_matrix(data.y_test, predicted, out / "confusion_matrix.png",
                               class_names=data.class_names, title="perceptron"),
    ])


if __name__ == "__main__":
    main()
