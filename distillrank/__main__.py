"""``python -m distillrank``: the ``distillrank`` command, for launchers that start a module
(``torchrun -m distillrank score ...``, ``srun python -m distillrank ...``)."""

from distillrank.cli import app

if __name__ == "__main__":
    app(prog_name="distillrank")
