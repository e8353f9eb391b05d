"""Save a tiny model as an MLflow pyfunc model for ``mlflow models serve``: ``python mlflow_model.py DIR NPZ``."""

import sys
from pathlib import Path

import mlflow.pyfunc
from tiny_numpy import forward, load


class Tiny(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.net = load(context.artifacts["net"])

    def predict(self, context, model_input, params=None):
        return forward(self.net, model_input)


if __name__ == "__main__":
    mlflow.pyfunc.save_model(
        sys.argv[1],
        python_model=Tiny(),
        artifacts={"net": sys.argv[2]},
        code_paths=[str(Path(__file__).with_name("tiny_numpy.py"))],  # what the pickled model imports
        pip_requirements=["numpy"],  # served with --env-manager local: nothing is installed, nothing inferred
    )
