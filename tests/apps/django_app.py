"""Django test app in one file: gunicorn tests.apps.django_app:app"""

import json
import time

import requests
from django.conf import settings

settings.configure(
    DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="test-only",
    MIDDLEWARE=[], INSTALLED_APPS=[], LOGGING_CONFIG=None,
)

import django  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

from tests.apps.common import STREAM_CHUNKS, STREAM_PAUSE_S, WsgiTiming, call_path, downstream  # noqa: E402

django.setup()


def user(request, user_id):
    return JsonResponse({"id": user_id, "name": f"user{user_id}"})


def team_member(request, team, member):
    return JsonResponse({"team": team, "member": member})


@csrf_exempt
def orders(request):
    if request.method != "POST":
        return HttpResponse(status=405)
    return JsonResponse({"created": True, "order": json.loads(request.body)}, status=201)


def boom(request):
    raise RuntimeError("boom")


def call(request):
    r = requests.get(downstream() + call_path(request.GET), timeout=5)
    return JsonResponse({"downstream": r.json()}, status=r.status_code)


def stream(request):
    def chunks():
        for i in range(STREAM_CHUNKS):
            yield f"chunk {i}\n"
            time.sleep(STREAM_PAUSE_S)
    return StreamingHttpResponse(chunks(), content_type="text/plain")


urlpatterns = [
    path("users/<int:user_id>", user),
    path("teams/<slug:team>/members/<str:member>", team_member),
    path("orders", orders),
    path("boom", boom),
    path("call", call),
    path("stream", stream),
]

app = WsgiTiming(get_wsgi_application())
