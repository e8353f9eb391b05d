"""KServe's Python ModelServer serving tiny models over REST (v1 and v2): ``python kserve_server.py PORT NAME=NPZ…``."""

import sys
import uuid

import kserve
from tiny_numpy import forward, load


class Tiny(kserve.Model):
    def __init__(self, name: str, path: str):
        super().__init__(name)
        self.net = load(path)
        self.ready = True

    def predict(self, payload, headers=None, response_headers=None):
        if isinstance(payload, kserve.InferRequest):  # the Open Inference Protocol (v2)
            probs = forward(self.net, payload.inputs[0].as_numpy())
            output = kserve.InferOutput(name="output-0", shape=list(probs.shape), datatype="FP32")
            output.set_data_from_numpy(probs, binary_data=False)
            # the request's id is optional (the protocol), the response's is a string (KServe's type)
            response_id = payload.id or str(uuid.uuid4())
            return kserve.InferResponse(response_id=response_id, model_name=self.name, infer_outputs=[output])
        return {"predictions": forward(self.net, payload["instances"]).tolist()}  # v1


if __name__ == "__main__":
    models = [Tiny(*spec.split("=", 1)) for spec in sys.argv[2:]]
    kserve.ModelServer(http_port=int(sys.argv[1]), enable_grpc=False, workers=1).start(models)
