"""The bottom layer: small helpers that every other part of puface uses, one home each.

=============  ==================================================================================
module         what lives there
=============  ==================================================================================
errors         `PufaceError` and its subclasses (what the CLI prints as one line)
registry       `Registry`: name -> factory, timm-style `create(name, **options)`
specs          the one spec grammar: ``name[:key=value,...]``, lists with ``|``, ``+`` composes
images         image conversion and 8-bit rounding: `to_uint8`, `to_float`, `quantize`, HWC <-> CHW
metrics        image quality: `psnr`, `ssim`, `dssim`, `ReferenceSSIM` (Fawkes' exact SSIM)
filters        Gaussian taps and blur (LowKey's smoothing, the blur defense)
device         `resolve_device` ("auto"/None -> CUDA when available)
seeding        `stable_seed`: 64-bit seeds from any parts, the same on every machine
fingerprint    content hashes of modules and pixels (parts of cache keys)
paths          `$PUFACE_HOME`, cache folders
version        `__version__`
=============  ==================================================================================

Images are float RGB tensors in [0, 1], (N, 3, H, W), unless a name says otherwise (uint8, HWC).
Nothing here imports from another part of puface.
"""
