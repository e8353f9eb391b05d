"""An MLServer custom runtime running a tiny model (model-settings.json: ``parameters.uri`` is the .npz)."""

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from tiny_numpy import forward, load


class Tiny(MLModel):
    async def load(self) -> bool:
        self.net = load(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        probs = forward(self.net, NumpyCodec.decode_input(payload.inputs[0]))
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("output-0", probs)])
