"""The guide's LeNet-5 code (section 7), run on gpucnn.

The block below is the guide's code as written, with only its two import lines changed
(``tensorflow.keras`` -> ``gpucnn``). Three comments that the guide's page layout wrapped onto a
second line are joined back into one line (a wrapped comment is not valid Python).
"""
import numpy as np
import pytest

import gpucnn
from test_models import blobs

# ---- the guide, section 7 (imports changed) ------------------------------------------------------
from gpucnn import layers, models  
from gpucnn.optimizers import SGD  
def create_LeNet5(input_shape):  
    model = models.Sequential([  
  
        # C1 and inputs  
        layers.Conv2D(filters=6, kernel_size=(5, 5), strides=(1, 1), activation='tanh',  
input_shape=input_shape, padding="valid", name="C1"),  
  
        # S2 Average pooling  
        layers.AveragePooling2D(pool_size=(2, 2), strides=(2, 2), name="S2"),  
  
        # C3

        layers.Conv2D(filters=16, kernel_size=(5, 5), strides=(1, 1), activation='tanh',
padding="valid", name="C3"),

        #S4
        layers.AveragePooling2D(pool_size=(2, 2), strides=(2, 2), name="S4"),

        #C5 (kernel size is smaller than original LeNet-5 in this layer because our images are smaller than what LeNet-5 was trained on)
        layers.Conv2D(filters=120, kernel_size=(5, 5), strides=(1, 1), activation='tanh',
padding="valid", name="C5"),

        #F6
        layers.Flatten(name="Flatten"), # Convert all features map into 1D vector for fully connected layer to process

        layers.Dense(units=84, activation='tanh', name="F6"),
        # layers.Dropout(0.5, name="Dropout"), # Disable 50% of the neuron to avoid overfitting,

        # Output Layer
        layers.Dense(units=10, activation='softmax', name="Output") # Units=10 because there are 10 classes (0-9)

    ], name="modifiedLeNet5")
    return model

LeNet5 = create_LeNet5(input_shape=(32, 32, 1)) # (32, 32, 1) is the shape of our images

# Compile the model
SGD = SGD(learning_rate=0.01) # Specify the learning rate
# sparse categorical crossentropy is a common loss function for multi-class classification
LeNet5.compile(optimizer=SGD, loss='sparse_categorical_crossentropy', metrics=['accuracy'])
# ---- end of the guide's code ---------------------------------------------------------------------

SECTION_7_2 = [  # layer, type, output shape, parameters (5*5*1*6+6, 5*5*6*16+16, ...)
    ("C1", "Conv2D", (None, 28, 28, 6), 156),
    ("S2", "AveragePooling2D", (None, 14, 14, 6), 0),
    ("C3", "Conv2D", (None, 10, 10, 16), 2416),
    ("S4", "AveragePooling2D", (None, 5, 5, 16), 0),
    ("C5", "Conv2D", (None, 1, 1, 120), 48120),
    ("Flatten", "Flatten", (None, 120), 0),
    ("F6", "Dense", (None, 84), 10164),
    ("Output", "Dense", (None, 10), 850),
]


pytestmark = pytest.mark.usefixtures("numpy_backend")


def guide_model(seed=0):
    gpucnn.manual_seed(seed)
    model = create_LeNet5(input_shape=(32, 32, 1))
    model.compile(optimizer=type(SGD)(learning_rate=0.01), loss='sparse_categorical_crossentropy',
                  metrics=['accuracy'])
    return model


def test_layers_match_section_7_2():
    got = [(la.name, type(la).__name__, la.output_shape, la.count_params()) for la in LeNet5.layers]
    assert got == SECTION_7_2
    assert LeNet5.count_params() == 61706
    assert LeNet5.name == "modifiedLeNet5"
    assert LeNet5.optimizer is SGD and SGD.learning_rate == 0.01
    assert LeNet5.loss.name == "sparse_categorical_crossentropy"
    assert [m.name for m in LeNet5.compiled_metrics] == ["accuracy"]


def test_summary_table(capsys):
    lines = []
    text = LeNet5.summary(print_fn=lines.append)
    assert text == "\n".join(lines)
    assert lines[0] == 'Model: "modifiedLeNet5"'
    assert "Layer (type)" in lines[2] and "Output Shape" in lines[2] and "Param #" in lines[2]
    rows = [ln for ln in lines if ln.startswith(" ") and "(" in ln and "Layer (type)" not in ln]
    assert len(rows) == len(SECTION_7_2)
    for row, (name, kind, shape, params) in zip(rows, SECTION_7_2):
        cells = row.split()
        assert cells[0] == name and cells[1] == f"({kind})"
        assert "(" + row.split("(", 2)[2].split(")")[0] + ")" == str(shape)
        assert cells[-1] == f"{params:,}"
    for total in ("Total params: 61,706", "Trainable params: 61,706", "Non-trainable params: 0"):
        assert total in lines
    LeNet5.summary()
    assert "Total params: 61,706" in capsys.readouterr().out


def class_blobs(rng, n):
    return blobs(rng, n, classes=10, shape=(32, 32, 1), noise=0.6)


def test_fit_a_few_steps_lowers_the_loss(rng):
    model = guide_model()
    x, y = class_blobs(rng, 192)
    before = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 3 and losses[2] < losses[1] < losses[0]
    after = model.evaluate(x, y, verbose=0)
    assert after[0] < before[0] - 0.05
    assert set(history.history) == {"loss", "accuracy"}
    p = model.predict(x[:7], verbose=0)
    assert p.shape == (7, 10)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


def test_loss_from_logits_equals_the_keras_loss_on_probabilities(rng):
    """fit/evaluate compute the loss from the logits of the final softmax; the value is Keras'
    -mean(log p[label]) on the predicted probabilities (clipped at 1e-7), written out here."""
    model = guide_model(3)
    x, y = class_blobs(rng, 40)
    p = model.predict(x, verbose=0).astype(np.float64)
    want = -np.mean(np.log(np.clip(p[np.arange(40), y], 1e-7, 1 - 1e-7)))
    loss, acc = model.evaluate(x, y, batch_size=16, verbose=0)
    assert abs(loss - want) < 1e-5
    assert abs(acc - np.mean(p.argmax(1) == y)) < 1e-12


def test_guide_model_learns_mnist(mnist_dir):
    from gpucnn import datasets

    x, y = datasets.mnist(mnist_dir, split="test", pad_to_32=True, download=False)
    model = guide_model()
    history = model.fit(x[:3000], y[:3000], batch_size=32, epochs=2, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]
    loss, acc = model.evaluate(x[8000:9000], y[8000:9000], verbose=0)
    assert acc >= 0.6, (loss, acc)
