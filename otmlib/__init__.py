"""otmlib: the library behind the otm notebooks.

A reproduction of Guo & Chao, "One-to-Many Network for Visually Pleasing Compression
Artifacts Reduction" (CVPR 2017). One module per concern:

- :mod:`otmlib.jpeg`     JPEG/DCT maths, quantisation intervals and the JPEG loss (eqs. 4-6)
- :mod:`otmlib.metrics`  PSNR, SSIM, PSNR-B on 8-bit luminance
- :mod:`otmlib.imageio`  safe image reading with errors that name the file
- :mod:`otmlib.evaluate` the paper's evaluation protocol (Table 2)
- :mod:`otmlib.cli`      the ``otm`` command line
"""

__version__ = "0.1.0"
