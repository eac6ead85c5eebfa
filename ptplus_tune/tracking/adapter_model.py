"""The pyfunc model definition MLflow stores with every logged adapter ("models from code": no pickled objects).
MLflow runs this file when the model is loaded; it needs ptplus-tune installed there."""

from mlflow.models import set_model

from ptplus_tune.tracking.pyfunc import AdapterModel

set_model(AdapterModel())
