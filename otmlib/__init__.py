"""otmlib: the library behind the otm notebooks.

A reproduction of Guo & Chao, "One-to-Many Network for Visually Pleasing Compression
Artifacts Reduction" (CVPR 2017). One module per concern:

- :mod:`otmlib.jpeg`      JPEG/DCT maths, quantisation intervals, the JPEG loss (eqs. 4-6), projection
- :mod:`otmlib.metrics`   PSNR, SSIM, PSNR-B on 8-bit luminance
- :mod:`otmlib.imageio`   safe image reading with errors that name the file
- :mod:`otmlib.datasets`  BSDS500: find, download with checksums, verify; the offline sample photos
- :mod:`otmlib.data`      training patches aligned / misaligned with the 8x8 grid
- :mod:`otmlib.models`    G (with shift-and-average), the baseline, D, tiled inference
- :mod:`otmlib.losses`    perceptual (VGG-19 / EfficientNet-Lite0), naturalness, D's loss, eq. (7)
- :mod:`otmlib.train`     resumable trainers for the baseline and the one-to-many network
- :mod:`otmlib.zoo`       release weights (safetensors + provenance), the shipped models
- :mod:`otmlib.restore`   restoring real files: candidates, colour, JPEG consistency
- :mod:`otmlib.measure`   candidate measurements: consistency, texture, BRISQUE, diversity
- :mod:`otmlib.evaluate`  the paper's evaluation protocol (Table 2)
- :mod:`otmlib.explorer`  the noise explorer's logic (notebook 06)
- :mod:`otmlib.teaching`  the notebooks' demonstrations and small ablation runs
- :mod:`otmlib.viz`       shared figures
- :mod:`otmlib.cli`       the ``otm`` command line
"""

__version__ = "0.1.0"
