"""``python -m sed.submit``: a DCASE Task 4 submission package from run directories, or ``--check PACKAGE.zip``
(see :mod:`sed.dcase.submit`)."""

from sed.dcase.submit import main

if __name__ == "__main__":
    raise SystemExit(main())
