"""Images: MNIST-format (IDX) files, the classifier that judges samples, the image-quality figure (FCD,
accuracy, class entropy) and image figures. Not loaded by ``import npdiff``."""
