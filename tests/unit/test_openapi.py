"""openapi.yaml must agree with the code it describes."""
import re
from pathlib import Path

import pytest
import yaml

from config import PROVIDERS, SERVICES
from config.registry import KINDS
from proxy import errors

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "openapi.yaml").read_text())
SCHEMAS = SPEC["components"]["schemas"]


def test_spec_is_openapi_3_1_with_the_three_routes():
    assert SPEC["openapi"] == "3.1.0"
    assert set(SPEC["paths"]) == {"/api/proxy/external", "/api/proxy/health",
                                  "/api/proxy/services"}


def test_service_names_are_the_registry():
    assert SCHEMAS["ServiceName"]["enum"] == sorted(SERVICES)


def test_error_codes_are_the_error_classes_and_routing_codes():
    codes = {cls.code for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, errors.ProxyError)}
    assert set(SCHEMAS["ErrorCode"]["enum"]) == codes | {"NOT_FOUND", "METHOD_NOT_ALLOWED"}


@pytest.mark.parametrize("status", ["400", "404", "405", "413", "429", "500", "502", "504"])
def test_forward_documents_each_error_status(status):
    assert status in SPEC["paths"]["/api/proxy/external"]["post"]["responses"]


def test_request_fields_are_the_schema_fields():
    from proxy.schemas import ProxyRequestSchema
    assert set(SCHEMAS["ProxyRequest"]["properties"]) == set(ProxyRequestSchema().fields)


def test_cohere_generate_fields_are_the_schema_fields():
    from proxy.schemas import CohereGenerateSchema
    spec = SCHEMAS["CohereGeneratePayload"]
    assert set(spec["properties"]) == set(CohereGenerateSchema().fields)
    assert spec["required"] == [name for name, field in CohereGenerateSchema().fields.items()
                                if field.required]


def test_catalog_entries_name_the_registrys_providers_and_kinds():
    entry = SCHEMAS["CatalogEntry"]["properties"]
    assert entry["provider"]["enum"] == sorted(PROVIDERS)
    assert entry["kind"]["enum"] == list(KINDS)


def test_google_payloads_are_the_services_with_a_model_in_their_path():
    google = SCHEMAS["ProxyRequest"]["allOf"][1]
    assert google["if"]["properties"]["target_service"]["enum"] == [
        s.name for s in SERVICES.values() if s.model_in_path]


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "models/x", "tunedModels/a-1", "a" * 128,
                                   "../x", "a/b", "x?y", "A", "gemini\n", "a..b", "a" * 129,
                                   "tunedModels/1", "-a", ""])
def test_the_spec_model_pattern_agrees_with_the_code(model):
    from proxy.upstream import _MODEL
    spec = SCHEMAS["GeminiModel"]
    # ECMA's $ (JSON Schema's) ends the string; Python's also matches before a final newline.
    pattern = spec["pattern"].removesuffix("$") + r"\Z"
    by_spec = (re.search(pattern, model) is not None and ".." not in model
               and len(model) <= spec["maxLength"])
    assert by_spec == bool(_MODEL.fullmatch(model) and ".." not in model)
