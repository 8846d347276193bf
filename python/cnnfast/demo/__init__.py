"""python -m cnnfast.demo: a local web page to learn CNNs by looking.

    pip install 'cnnfast[demo]'
    python -m cnnfast.demo                   # mnist_cnn.npz; open http://127.0.0.1:8000/

Two parts on one page: draw a digit and watch the network read it (the predicted digit, the ten
probabilities, the 28x28 image the model saw, each convolution layer's feature maps), and step
the worked backpropagation example of cnnfast.backprop (exact fractions beside the float32
kernel replay). The page is plain HTML, CSS and JavaScript in static/, served by the package
(nothing from the network). The modules:

- api: what the JSON API computes (no web framework needed to call it);
- server: the Starlette app, `create_app(model, test_set)`;
- __main__: the command (its flags: python -m cnnfast.demo --help).
"""
