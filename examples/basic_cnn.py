"""Train the basic CNN of section 3: conv + ReLU, max-pooling, dense, softmax.

With no arguments it trains on scikit-learn's handwritten digits (embedded, upscaled to 32 x 32, a
seeded fifth held out); with --data DIR on the MNIST files in DIR (28 x 28).

    python examples/basic_cnn.py
    python examples/basic_cnn.py --data ~/mnist --filters 16

Pictures in runs/basic_cnn/: curves.png, filters_conv.png, feature_maps_1_conv.png and
feature_maps_2_pool.png (one test image after the conv and after the pooling layer: the guide's
Figures 7 and 10 from the trained network), confusion_matrix.png.
"""
import _common
from gpucnn import optimizers, zoo

NAME = "basic_cnn"
PROG = NAME + ".py"
EPOCHS = 5


def main(argv=None):
    p = _common.parser(NAME, "Train the guide's basic CNN and save pictures of it.",
                       epochs=EPOCHS, batch_size=32,
                       data_help="folder with the MNIST IDX files (default: the embedded digits)")
    p.add_argument("--filters", type=_common.positive_int, default=8, help="filters of the conv layer")
    p.add_argument("--learning-rate", type=_common.positive_float, default=1e-3, help="Adam's learning rate")
    args = p.parse_args(argv)
    _common.start(args, PROG)
    if args.data is None:
        data = _common.digits_data(PROG, 32, seed=args.seed)
    else:
        data = _common.mnist_data(PROG, args.data, pad_to_32=False)
    data.limit(args.limit)
    model = _common.build(PROG, zoo.basic_cnn, input_shape=data.x_train.shape[1:], classes=10,
                          filters=args.filters)
    out = _common.output_dir(PROG, args.out)
    print(data.describe())

    model.compile(optimizer=optimizers.Adam(learning_rate=args.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.summary()
    history = model.fit(data.x_train, data.y_train, batch_size=args.batch_size,
                        epochs=args.epochs, validation_data=(data.x_test, data.y_test),
                        verbose=args.verbose)
    _, _, predicted = _common.classifier_report(model, data, 256)
    _common.saved(_common.cnn_pictures(model, data, history, predicted, out, "conv",
                                       "basic CNN (guide, section 3)"))


if __name__ == "__main__":
    main()
