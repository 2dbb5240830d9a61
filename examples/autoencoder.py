"""Train the convolutional autoencoder of section 6 to remove noise from handwritten digits.

Input: a clean image plus Gaussian noise (standard deviation --noise, clipped to [0, 1]); target:
the clean image; loss: MSE. With no arguments it uses scikit-learn's handwritten digits
(embedded, upscaled to 32 x 32, a seeded fifth held out); with --data DIR the MNIST files in DIR
(28 x 28). It prints the MSE of the noisy inputs and of the reconstructions against the clean
test images.

    python examples/autoencoder.py
    python examples/autoencoder.py --data ~/mnist --noise 0.5

Pictures in runs/autoencoder/: curves.png (MSE per epoch), reconstructions.png (rows: input,
noisy input, reconstruction), filters_enc1.png, feature_maps_<i>_<layer>.png (one noisy test image
through the encoder, the bottleneck and the decoder).
"""
import numpy as np

import _common
from gpucnn import optimizers, plots, zoo

NAME = "autoencoder"
PROG = NAME + ".py"
EPOCHS = 15


def add_noise(x, std, seed):
    rng = np.random.default_rng(seed)
    return np.clip(x + rng.normal(0.0, std, x.shape), 0.0, 1.0).astype(np.float32)


def main(argv=None):
    p = _common.parser(NAME, "Train a denoising convolutional autoencoder.",
                       epochs=EPOCHS, batch_size=32,
                       data_help="folder with the MNIST IDX files (default: the embedded digits)")
    p.add_argument("--noise", type=_common.positive_float, default=0.4,
                   help="standard deviation of the Gaussian noise added to the inputs")
    p.add_argument("--latent-channels", type=_common.positive_int, default=8, help="channels of the bottleneck")
    p.add_argument("--learning-rate", type=_common.positive_float, default=1e-3, help="Adam's learning rate")
    args = p.parse_args(argv)
    _common.start(args, PROG)
    if args.data is None:
        data = _common.digits_data(PROG, 32, seed=args.seed)
    else:
        data = _common.mnist_data(PROG, args.data, pad_to_32=False)
    data.limit(args.limit)
    model = _common.build(PROG, zoo.conv_autoencoder, input_shape=data.x_train.shape[1:],
                          latent_channels=args.latent_channels)
    out = _common.output_dir(PROG, args.out)
    print(data.describe())

    noisy_train = add_noise(data.x_train, args.noise, args.seed + 1)
    noisy_test = add_noise(data.x_test, args.noise, args.seed + 2)
    model.compile(optimizer=optimizers.Adam(learning_rate=args.learning_rate), loss="mse")
    model.summary()
    history = model.fit(noisy_train, data.x_train, batch_size=args.batch_size, epochs=args.epochs,
                        validation_data=(noisy_test, data.x_test), verbose=args.verbose)
    recon = np.asarray(model.predict(noisy_test, batch_size=256, verbose=0))
    mse_noisy = float(np.mean((noisy_test - data.x_test) ** 2))
    mse_recon = float(np.mean((recon - data.x_test) ** 2))
    print(f"test MSE against the clean images: noisy input {mse_noisy:.4f}, reconstruction "
          f"{mse_recon:.4f} ({mse_recon / mse_noisy:.2f} of the noisy input's)")

    if not _common.main_rank():
        return                             # rank 0 draws for a --distributed job
    paths = [
        plots.curves(history, out / "curves.png", title="denoising autoencoder (MSE)"),
        plots.reconstructions({"input": data.x_test, "noisy input": noisy_test,
                               "reconstruction": recon}, out / "reconstructions.png",
                              title=f"denoising autoencoder: noise std {args.noise:g}, "
                                    f"MSE {mse_noisy:.4f} -> {mse_recon:.4f}"),
        plots.filters(model.get_layer("enc1").kernel.numpy(), out / "filters_enc1.png",
                      title="enc1: learned filters"),
    ]
    for i, (name, fmap) in enumerate(zoo.feature_maps(model, noisy_test[0]), 1):
        paths.append(plots.feature_maps(fmap, out / f"feature_maps_{i}_{name}.png",
                                        title=f"after {name}", image=noisy_test[0]))
    _common.saved(paths)


if __name__ == "__main__":
    main()
