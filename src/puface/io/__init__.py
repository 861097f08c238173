"""File I/O: robust image reading and atomic writing (`images`), finding image files (`files`), and
streaming folder-in / folder-out jobs (`jobs`) that `cloak`, `purify` and `align` run on."""
