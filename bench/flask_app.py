"""The recipe classify replaces, as PyTorch's "Deploying PyTorch in Python via a REST API
with Flask" tutorial writes it: DenseNet-121 behind Flask's `/predict`, one image per
request through `Resize(255)`, `CenterCrop(224)`, `ToTensor`, `Normalize`, a forward pass
without `torch.no_grad()`, and `{"class_id", "class_name"}` back. Two changes only, both
forced by this machine: the weights are torchvision's random initialisation (the download
server is unreachable; speed does not depend on the values), and the class index is built
from classify's own ImageNet label list instead of the tutorial's
`imagenet_class_index.json`.

    PYTHON bench/flask_app.py PORT

Served by Flask's own server (`app.run`, threaded), as the tutorial runs it. Used by
`bench/flask-vs-classify.sh`.
"""

import io
import os
import sys

import torchvision.transforms as transforms
from flask import Flask, jsonify, request
from PIL import Image
from torchvision import models

HERE = os.path.dirname(os.path.abspath(__file__))

app = Flask(__name__)
with open(os.path.join(HERE, "..", "src", "imagenet_classes.txt")) as f:
    imagenet_class_index = {
        str(i): line.rstrip("\n").split("\t", 1) for i, line in enumerate(f)
    }
model = models.densenet121(weights=None)
model.eval()

preprocess = transforms.Compose(
    [
        transforms.Resize(255),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ]
)


def transform_image(image_bytes):
    image = Image.open(io.BytesIO(image_bytes))
    return preprocess(image).unsqueeze(0)


def get_prediction(image_bytes):
    tensor = transform_image(image_bytes)
    outputs = model.forward(tensor)
    _, y_hat = outputs.max(1)
    return imagenet_class_index[str(y_hat.item())]


@app.route("/predict", methods=["POST"])
def predict():
    img_bytes = request.files["file"].read()
    class_id, class_name = get_prediction(img_bytes)
    return jsonify({"class_id": class_id, "class_name": class_name})


if __name__ == "__main__":
    app.run(port=int(sys.argv[1]))
